package guest

import (
	"os"
	"strings"
)

// Switches of the python fast path's speed-ups, for measuring each against the path
// without it in one bench run (bench's warm.go). $VMEXEC_GUEST_FAST in the agent's
// environment lists the ones turned off, comma-separated ("off": all of them); unset,
// all are on:
//
//   - freeze: the zygote moves its start-up objects to the garbage collector's
//     permanent generation (gc.freeze) before its first fork, so that a run's
//     collections, and its exit, do not touch (and so copy) the zygote's pages; before
//     each later fork it collects its young generations (not freezing what it made
//     since, which would keep its cyclic garbage forever);
//   - exit: a forked run ends as the interpreter's exit does as far as a program can
//     tell (threads joined, atexit handlers, the run's own modules and objects
//     finalized, stdio flushed, the exit status), then leaves with os._exit, without
//     tearing down the objects it inherited from the zygote;
//   - hint: the zygote forks the next spare only once the agent has sent the run's
//     result (the agent tells it: "spare"), so that the fork does not compete with the
//     end of the run for the sandbox's CPU.
var fastOff = parseFastOff(os.Getenv("VMEXEC_GUEST_FAST"))

func parseFastOff(v string) map[string]bool {
	off := map[string]bool{}
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "off" {
			for _, all := range []string{"freeze", "exit", "hint"} {
				off[all] = true
			}
		} else if f != "" {
			off[f] = true
		}
	}
	return off
}

// fast reports whether the speed-up name is on.
func fast(name string) bool { return !fastOff[name] }

// zygoteArgs are the zygote script's arguments: the speed-ups it applies.
func zygoteArgs() []string {
	var out []string
	for _, f := range []string{"freeze", "exit", "hint"} {
		if fast(f) {
			out = append(out, f)
		}
	}
	return out
}
