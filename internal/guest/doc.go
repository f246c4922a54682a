// Package guest is what the vmexec guest agent does inside a sandbox: it serves the
// agentproto protocol (see Serve), runs each request's program under per-run limits,
// and, as the sandbox's PID 1, reaps every process.
//
// # Runs
//
// Each exec request gets a fresh directory RunBase/run-N (RunBase is root-owned, mode
// 0711; run-N belongs to the run user and is removed after the run) holding the code:
//
//	python      python3 -u main.py
//	javascript  node --max-old-space-size=<memory MiB> main.js
//	bash        bash main.sh
//	rust        rustc -o main main.rs, then ./main
//	go          go build -o main main.go, then ./main   (GOCACHE=~/.cache/go-build,
//	            GOPATH=~/go, GO111MODULE=off, GOFLAGS=-buildvcs=false, GOTOOLCHAIN=local)
//
// Compilers run in the run dir; programs run in the request's working directory (home
// by default, created if missing) with PATH, HOME, USER=user, LANG=C.UTF-8 and the
// request's env, and read the request's stdin (EOF at once if empty). A compile that
// fails is the run's result (nonzero_exit with the compiler's output); the output of a
// compile that succeeds is dropped. The timeout covers compile and run together.
//
// # Limits
//
// Every program is started through the launcher (see LaunchCommand) in its own
// process group. The launcher sets RLIMIT_CORE=0, RLIMIT_FSIZE=max_file_bytes and
// RLIMIT_NPROC=max_procs, empties the capability bounding set, drops to the run user,
// clears the inheritable and ambient capabilities, sets no_new_privs (a setuid-root
// binary such as su runs as the run user, and no exec gains a capability) and execs
// the program.
//
// Memory is limited by accounting, not by address space (see memwatch.go): while the
// run step runs, the agent sums the resident memory of the run's processes every few
// milliseconds and kills them all when it passes the memory limit (verdict
// memory_limit, with a note on stderr). So threads, whose stacks and malloc arenas
// reserve address space they barely use, cost only what they touch (32 python threads
// start under 512 MiB). Node also gets --max-old-space-size=memory and Go programs
// GOMEMLIMIT=memory, so that their garbage collectors keep the heap under the limit.
// Compile steps are not watched; they, the run's files (in memory) and background
// processes left after a run are bounded by the sandbox's own memory cap.
//
// CPU is not a per-run limit: the sandbox as a whole has a CPU quota, enforced by the
// host (the gVisor sandbox's host cgroup; a microVM's vCPUs and, where the host allows,
// its QEMU process's cgroup). A run's wall time is bounded by its timeout.
//
// On timeout or when an output stream passes its limit, the whole process group is
// killed with SIGKILL (repeatedly, until it is empty). When the program exits by itself,
// its background processes are left alone — agents start servers and counters and expect
// them in the next turn; they keep running, within the sandbox's CPU quota, are frozen
// with the sandbox when it is suspended (its snapshot holds them) and run on when it
// resumes — and the agent waits at most 100 ms more for output before it
// returns; the pipes are drained and discarded after that, so a background process that
// writes later is not killed by SIGPIPE. The one exception is a fork bomb left running
// in the background (see bomb.go), whose process group is killed. See resultOf for the
// verdict rules.
//
// The agent never crashes on what a program does: fork bombs are bounded by
// RLIMIT_NPROC (which binds the run user, not root) and cleaned up by the group kill;
// output floods by the per-stream cap; memory bombs by the memory watch; a run that cannot
// start is reported with Error set, exit code -1 and verdict killed.
//
// # Reaping
//
// As PID 1 the agent inherits every orphan in the sandbox. A single reaper (see reaper)
// waits for all children; statuses of the runs' processes go to their runs and the rest
// are discarded. The agent never uses exec.Cmd.
package guest
