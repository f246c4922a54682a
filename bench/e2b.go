package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// printE2B measures vmexec through the official E2B SDK (clients/e2b-test/bench.mjs,
// the pinned @e2b/code-interpreter): Sandbox.create() + runCode('1+1') + kill(), the
// create-run-close figure a third party measured for E2B at 442 ms p50, and a warm
// runCode in one sandbox; as ratios to the native spawn baseline of the same run.
// The daemon keeps a pool of 2 ready sandboxes, as a deployment would.
func printE2B(tmp, runsc, tplDir string, n int, native time.Duration) error {
	dir, err := filepath.Abs("clients/e2b-test")
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@e2b", "code-interpreter")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts")
		cmd.Dir, cmd.Stderr = dir, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("npm ci in %s (the pinned E2B SDK): %w", dir, err)
		}
	}
	d, err := startDaemon(tmp, runsc, tplDir, "--pool-size", "2")
	if err != nil {
		return err
	}
	defer d.stop()
	cmd := exec.Command("node", "bench.mjs", fmt.Sprint(n))
	cmd.Dir, cmd.Stderr = dir, os.Stderr
	cmd.Env = append(os.Environ(), "E2B_API_URL="+d.url+"/e2b/api", "E2B_SANDBOX_URL="+d.url+"/e2b/envd",
		"E2B_API_KEY=e2b_"+fmt.Sprintf("%040d", 0), "E2B_DOMAIN=e2b.invalid")
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("clients/e2b-test/bench.mjs: %w", err)
	}
	var res struct {
		Mode       string
		Cold, Warm []float64
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return fmt.Errorf("bench.mjs printed %q: %w", out, err)
	}
	ms := func(name string, v []float64) series {
		s := series{name: name}
		for _, x := range v {
			s.d = append(s.d, time.Duration(x*float64(time.Millisecond)))
		}
		return s
	}
	call := map[string]string{"runCode": "runCode('1+1')", "commands.run": "commands.run(python3)"}[res.Mode]
	fmt.Printf("\n%-44s %6s %10s %10s %12s\n", "E2B SDK (@e2b/code-interpreter 2.8.0)", "n", "p50", "p95", "p50/native")
	for _, s := range []series{ms("create + "+call+" + kill", res.Cold), ms("warm "+call, res.Warm)} {
		printRow(44, s, 100*time.Microsecond, native)
	}
	if res.Mode != "runCode" {
		fmt.Println("(this daemon has no interpreter contexts: runCode was measured as commands.run)")
	}
	return nil
}
