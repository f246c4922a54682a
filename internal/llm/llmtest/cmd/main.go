// Command cmd serves the llmtest fake OpenAI-compatible server on its own, for the JS
// and UI suites:
//
//	go run ./internal/llm/llmtest/cmd -addr 127.0.0.1:11435 -scenario fix-fenced
//	go run ./internal/llm/llmtest/cmd -script turns.json   # a JSON list of llmtest.Turn
//
// It prints its base URL (…/v1) on stdout once listening.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/vmexec/vmexec/internal/llm/llmtest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	scenario := flag.String("scenario", "fix-fenced", "one of: "+strings.Join(llmtest.ScenarioNames(), ", "))
	script := flag.String("script", "", "a JSON file holding a list of turns, answered in order (overrides -scenario)")
	flag.Parse()
	r, err := responder(*scenario, *script)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmtest:", err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmtest:", err)
		os.Exit(1)
	}
	fmt.Printf("http://%s/v1\n", ln.Addr())
	if err := http.Serve(ln, llmtest.NewHandler(r)); err != nil {
		fmt.Fprintln(os.Stderr, "llmtest:", err)
		os.Exit(1)
	}
}

func responder(scenario, script string) (llmtest.Responder, error) {
	if script == "" {
		return llmtest.Scenario(scenario)
	}
	b, err := os.ReadFile(script)
	if err != nil {
		return nil, err
	}
	var turns []llmtest.Turn
	if err := json.Unmarshal(b, &turns); err != nil {
		return nil, fmt.Errorf("%s: %w", script, err)
	}
	return llmtest.Script(turns...), nil
}
