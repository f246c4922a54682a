// Package guest is what the vmexec guest agent does inside a sandbox: it serves the
// agentproto protocol, version 2 (see Serve: operations multiplexed by ID, output
// streamed while a program runs, cancel and signals, file operations), runs each
// request's program under per-run limits, and, as the sandbox's PID 1, reaps every
// process.
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
// by default; relative to home; it must exist) with PATH, HOME, USER=user,
// LANG=C.UTF-8 and the request's env, and read the request's stdin (EOF at once if
// empty). A program's stdout and stderr are streamed to the host as the agent reads
// them (output frames of at most 64 KiB, sent one at a time: a slow host blocks the
// pump and with it the program's writes, so the agent holds at most a chunk per
// stream); the result frame follows them and carries no output. A compile that fails
// is the run's result (nonzero_exit with the compiler's output, sent then); the output
// of a compile that succeeds is dropped. The timeout covers compile and run together.
//
// A request the agent cannot honour is refused with an invalid_request error frame and
// never runs: a working directory that is missing or not a directory, an environment
// variable whose name is empty or holds '=' or NUL (or whose value holds NUL), an
// empty PATH. A run that cannot start for another reason (an unknown language, a
// missing toolchain) is a result with Error set (see below).
//
// A cancel from the host kills the run's process group (the step in progress, compile
// or run) and the result has verdict canceled; a signal from the host goes to the
// process group of the step in progress. Runs take turns: a second exec waits for the
// first (a cancel reaches it while it waits).
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
// On timeout or when an output stream passes its limit — counted as it is sent:
// max_output_bytes can be as large as the host allows, since nothing is held for the
// result — the whole process group is killed with SIGKILL (repeatedly, until it is
// empty), and the stream is cut exactly at the limit. When the program exits by itself,
// its background processes are left alone — agents start servers and counters and expect
// them in the next turn; they keep running, within the sandbox's CPU quota, are frozen
// with the sandbox when it is suspended (its snapshot holds them) and run on when it
// resumes — and the agent waits at most 100 ms more for output before it
// returns; the pipes are drained and discarded after that, so a background process that
// writes later is not killed by SIGPIPE. (The 100 ms do not run down while a chunk has
// been waiting 5 ms or more for a slow host to take it, up to 5 s, so a slow host does
// not lose a run's last output.) The one exception is a fork bomb left running
// in the background (see bomb.go), whose process group is killed. See resultOf for the
// verdict rules.
//
// The agent never crashes on what a program does: fork bombs are bounded by
// RLIMIT_NPROC (which binds the run user, not root) and cleaned up by the group kill;
// output floods by the per-stream cap; memory bombs by the memory watch; a run that cannot
// start is reported with Error set, exit code -1 and verdict killed.
//
// # Files
//
// read, write, stat, list, mkdir and remove act on the sandbox's filesystem with the
// agent's privileges (see files.go): paths are absolute or relative to home; written
// files and created directories (a write's missing parents too) are given to the run
// user; a write lands in a temporary file renamed over the target when its body is
// complete. Errors are the protocol's codes: not_exist, is_dir (reading or writing a
// directory, removing a non-empty one without recursive), not_dir, file_too_large
// (EFBIG, ENOSPC), invalid_path.
//
// # Interpreter contexts
//
// A context is a long-lived python or node interpreter the agent keeps for the host
// (see contexts.go): started like a run, driven over a control socket, outliving
// connections and checkpoints. A cell is an exec naming its context: it takes the run
// token, streams the interpreter's output and rich results, and is interrupted (SIGINT)
// by its deadline; an interpreter that does not stop is killed and replaced.
//
// # Reaping
//
// As PID 1 the agent inherits every orphan in the sandbox. A single reaper (see reaper)
// waits for all children; statuses of the runs' processes go to their runs and the rest
// are discarded. The agent never uses exec.Cmd.
package guest
