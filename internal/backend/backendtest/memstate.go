package backendtest

// Bash programs that prove a snapshot holds a running process's memory, not only files:
// a background python process keeps a number in memory only; SIGUSR1 adds one to it,
// SIGUSR2 makes it write the number to ~/mem (SIGUSR1 does too, after adding). The tests take a snapshot with the number
// at 1, bump it to 2, roll back, and read 1 back from the process.
const (
	// MemStart starts the process and prints the number it holds (0).
	MemStart = `cat > ~/mem.py <<'PY'
import os, signal, time
n = 0
def bump(*_):
    global n
    n += 1
    dump()
def dump(*_):
    with open('/home/user/mem.tmp', 'w') as f:
        f.write(str(n))
    os.replace('/home/user/mem.tmp', '/home/user/mem')
signal.signal(signal.SIGUSR1, bump)
signal.signal(signal.SIGUSR2, dump)
with open('/home/user/mem.pid', 'w') as f:
    f.write(str(os.getpid()))
dump()
while True:
    time.sleep(1)
PY
rm -f ~/mem ~/mem.pid
nohup python3 ~/mem.py >/dev/null 2>&1 &
for i in $(seq 200); do [ -f ~/mem ] && break; sleep 0.05; done
cat ~/mem`
	// MemRead asks the process for its number and prints it ("gone" without the process).
	MemRead = "sig=USR2\n" + memAsk
	// MemBump adds one to the number, then prints it as MemRead does.
	MemBump = "sig=USR1\n" + memAsk
	memAsk  = `rm -f ~/mem
kill -$sig "$(cat ~/mem.pid)" || { echo gone; exit 0; }
for i in $(seq 200); do [ -f ~/mem ] && break; sleep 0.05; done
cat ~/mem`
)
