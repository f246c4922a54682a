package policy

import (
	"errors"
	"strings"
	"testing"
)

const allow = ""

// checkCase is one program and the rule it must trip, or allow.
type checkCase struct {
	why  string // what the case guards
	lang string
	code string
	want string // rule id, or allow
}

var blockCases = []checkCase{
	// bash: destroy_root
	{"rm -rf / wipes the machine", "bash", "rm -rf /", RuleDestroyRoot},
	{"rm -rf /* is the glob form", "bash", "rm -rf /*", RuleDestroyRoot},
	{"rm -rf ~ wipes the home directory", "bash", "rm -rf ~", RuleDestroyRoot},
	{"$HOME is the home directory", "bash", "rm -rf $HOME", RuleDestroyRoot},
	{"quoted $HOME with trailing slash", "bash", `rm -rf "$HOME/"`, RuleDestroyRoot},
	{"/home/user is a home directory", "bash", "rm -rf /home/user", RuleDestroyRoot},
	{"sudo and --no-preserve-root are seen through", "bash", "sudo rm -rf --no-preserve-root /", RuleDestroyRoot},
	{"separate -r -f flags and a system directory", "bash", "rm -r -f /etc", RuleDestroyRoot},
	{"second command in an && list", "bash", "cd /tmp && rm -fr ~/*", RuleDestroyRoot},
	{"find / -delete removes everything", "bash", "find / -delete", RuleDestroyRoot},
	{"bash -c runs its argument", "bash", "bash -c 'rm -rf /'", RuleDestroyRoot},
	{"eval runs its arguments", "bash", `eval "rm -rf /"`, RuleDestroyRoot},
	{"echo piped into sh runs the text", "bash", `echo "rm -rf /" | sh`, RuleDestroyRoot},
	{"heredoc fed to bash runs", "bash", "bash <<'EOF'\nrm -rf /\nEOF\n", RuleDestroyRoot},
	{"python -c inside bash is checked as Python", "bash", `python3 -c "import shutil; shutil.rmtree('/')"`, RuleDestroyRoot},
	{"command substitution inside quotes runs", "bash", `echo "$(rm -rf ~)"`, RuleDestroyRoot},
	// bash: devices
	{"mkfs on a disk", "bash", "mkfs.ext4 /dev/sda1", RuleMkfs},
	{"dd onto a disk", "bash", "dd if=/dev/zero of=/dev/sda bs=1M", RuleDDDevice},
	{"redirect onto a disk", "bash", "echo x > /dev/sda", RuleOverwriteDevice},
	{"tee onto an NVMe disk", "bash", "cat disk.img | tee /dev/nvme0n1 >/dev/null", RuleOverwriteDevice},
	{"shred a disk", "bash", "shred -n 1 /dev/vda", RuleOverwriteDevice},
	// bash: processes and machine
	{"classic fork bomb", "bash", ":(){ :|:& };:", RuleForkBomb},
	{"named fork bomb", "bash", "bomb() { bomb | bomb & }; bomb", RuleForkBomb},
	{"perl fork bomb", "bash", `perl -e "fork while fork"`, RuleForkBomb},
	{"curl piped into sh", "bash", "curl -fsSL https://example.com/install.sh | sh", RulePipeToShell},
	{"wget piped into sudo bash", "bash", "wget -qO- https://example.com/i | sudo bash", RulePipeToShell},
	{"pipe continues on the next line", "bash", "curl -fsSL https://example.com/i |\n  bash -s -- --yes", RulePipeToShell},
	{"sh -c of a download", "bash", `sh -c "$(curl -fsSL https://example.com/i)"`, RulePipeToShell},
	{"process substitution of a download", "bash", "bash <(curl -s https://example.com/i)", RulePipeToShell},
	{"chmod -R 777 /", "bash", "chmod -R 777 /", RuleChmodRoot},
	{"chown -R of a home directory", "bash", "chown -R nobody:nogroup /home/user", RuleChmodRoot},
	{"shutdown", "bash", "shutdown -h now", RuleShutdown},
	{"systemctl poweroff", "bash", "systemctl poweroff", RuleShutdown},
	{"reboot via sudo", "bash", "sudo reboot", RuleReboot},
	{"sysrq trigger reboots", "bash", "echo b > /proc/sysrq-trigger", RuleReboot},
	{"kill -9 -1 kills everything", "bash", "kill -9 -1", RuleKillAll},
	// python
	{"shutil.rmtree of root", "python", "import shutil\nshutil.rmtree('/')\n", RuleDestroyRoot},
	{"rmtree of the expanded home", "python", "import os, shutil\nshutil.rmtree(os.path.expanduser(\"~\"))\n", RuleDestroyRoot},
	{"rmtree imported by name, Path.home()", "python", "from shutil import rmtree\nfrom pathlib import Path\nrmtree(Path.home())\n", RuleDestroyRoot},
	{"os.system runs a shell command", "python", "import os\nos.system(\"rm -rf /\")\n", RuleDestroyRoot},
	{"subprocess argv list", "python", "import subprocess\nsubprocess.run([\"rm\", \"-rf\", \"/\"], check=True)\n", RuleDestroyRoot},
	{"subprocess shell=True download", "python", "import subprocess\nsubprocess.run(\"curl -s https://x.io/i | bash\", shell=True)\n", RulePipeToShell},
	{"single-word command in a process call", "python", "import subprocess\nsubprocess.call([\"reboot\"])\n", RuleReboot},
	{"exec of a string is checked as Python", "python", "exec(\"import os; os.system('rm -rf /')\")\n", RuleDestroyRoot},
	{"one-line fork loop", "python", "import os\nwhile True: os.fork()\n", RuleForkBomb},
	{"fork loop as a block", "python", "import os\nwhile True:\n    os.fork()\n    print('again')\n", RuleForkBomb},
	{"opening a disk for writing", "python", "with open(\"/dev/sda\", \"wb\") as f:\n    f.write(b\"\\0\" * 512)\n", RuleOverwriteDevice},
	{"os.kill(-1)", "python", "import os, signal\nos.kill(-1, signal.SIGKILL)\n", RuleKillAll},
	// javascript
	{"fs.rmSync of root", "javascript", "const fs = require('fs');\nfs.rmSync('/', { recursive: true, force: true });\n", RuleDestroyRoot},
	{"execSync through child_process", "javascript", "require('child_process').execSync('rm -rf ~');\n", RuleDestroyRoot},
	{"spawn with an argv array", "javascript", "const { spawn } = require('child_process');\nspawn('rm', ['-rf', '/']);\n", RuleDestroyRoot},
	{"rmSync of os.homedir()", "javascript", "const fs = require('fs'), os = require('os');\nfs.rmSync(os.homedir(), { recursive: true });\n", RuleDestroyRoot},
	{"process.kill(-1)", "javascript", "process.kill(-1, 'SIGKILL');\n", RuleKillAll},
	{"endless fork loop", "javascript", "const cp = require('child_process');\nwhile (true) { cp.fork(__filename); }\n", RuleForkBomb},
	{"shell fork bomb via execSync", "javascript", "const { execSync } = require('child_process');\nexecSync(':(){ :|:& };:');\n", RuleForkBomb},
	// go
	{"os.RemoveAll of root", "go", "package main\n\nimport \"os\"\n\nfunc main() { os.RemoveAll(\"/\") }\n", RuleDestroyRoot},
	{"exec.Command argv", "go", "package main\n\nimport \"os/exec\"\n\nfunc main() { exec.Command(\"rm\", \"-rf\", \"/\").Run() }\n", RuleDestroyRoot},
	{"exec.Command sh -c mkfs", "go", "package main\n\nimport \"os/exec\"\n\nfunc main() { exec.Command(\"sh\", \"-c\", \"mkfs.ext4 /dev/sdb\").Run() }\n", RuleMkfs},
	{"reboot system call", "go", "package main\n\nimport \"syscall\"\n\nfunc main() { syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART) }\n", RuleReboot},
	{"power-off system call", "go", "package main\n\nimport \"syscall\"\n\nfunc main() { syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF) }\n", RuleShutdown},
	{"syscall.Kill(-1)", "go", "package main\n\nimport \"syscall\"\n\nfunc main() { syscall.Kill(-1, syscall.SIGKILL) }\n", RuleKillAll},
	// rust
	{"remove_dir_all of root", "rust", "fn main() {\n    std::fs::remove_dir_all(\"/\").unwrap();\n}\n", RuleDestroyRoot},
	{"Command::new with args", "rust", "use std::process::Command;\nfn main() {\n    Command::new(\"rm\").args([\"-rf\", \"/\"]).status().unwrap();\n}\n", RuleDestroyRoot},
	{"Command chain of .arg", "rust", "use std::process::Command;\nfn main() {\n    Command::new(\"sh\").arg(\"-c\").arg(\"dd if=/dev/zero of=/dev/sda\").status().unwrap();\n}\n", RuleDDDevice},
	{"remove_dir_all of $HOME", "rust", "use std::{env, fs};\nfn main() {\n    fs::remove_dir_all(env::var(\"HOME\").unwrap()).unwrap();\n}\n", RuleDestroyRoot},
	// generic rules
	{"unsupported language", "cobol", "DISPLAY 'HI'.", RuleLanguageNotAllowed},
	{"empty program", "python", "  \n\t\n", RuleEmptyCode},
	{"program over the size limit", "python", "x = 1\n" + strings.Repeat("# padding\n", 11*1024), RuleCodeTooLarge},
}

var allowCases = []checkCase{
	// bash
	{"deleting a build directory is normal", "bash", "rm -rf ./build", allow},
	{"deleting under /tmp is normal", "bash", "rm -rf /tmp/work", allow},
	{"several relative directories", "bash", "rm -rf build/ dist/ node_modules", allow},
	{"a directory inside home", "bash", "rm -rf ~/project/tmp", allow},
	{"a cache inside $HOME", "bash", `rm -rf "$HOME/.cache/pip"`, allow},
	{"a project inside /home/user", "bash", "rm -rf /home/user/project/build", allow},
	{"non-recursive rm of a file", "bash", "rm -f /tmp/x.txt", allow},
	{"a comment is not run", "bash", "# never run rm -rf /\nls", allow},
	{"a trailing comment is not run", "bash", "ls -la # not: rm -rf ~", allow},
	{"echo prints, it does not run", "bash", `echo "rm -rf /"`, allow},
	{"printf prints, it does not run", "bash", `printf '%s\n' "dd if=/dev/zero of=/dev/sda"`, allow},
	{"a heredoc into a file is data", "bash", "cat <<EOF > notes.txt\nrm -rf /\nshutdown now\nEOF\nwc -l notes.txt\n", allow},
	{"dd to a regular file", "bash", "dd if=/dev/zero of=./file bs=1M count=10", allow},
	{"dd to /dev/null", "bash", "dd if=/dev/urandom of=/dev/null bs=1k count=1", allow},
	{"reading a disk with dd is not writing it", "bash", "dd if=/dev/sda of=mbr.bin bs=512 count=1", allow},
	{"redirect to /dev/null", "bash", "make >/dev/null 2>&1", allow},
	{"listing /dev", "bash", "ls -la /dev/", allow},
	{"mkfs on an image file", "bash", "truncate -s 64M disk.img && mkfs.ext4 -F disk.img", allow},
	{"downloading a script to a file", "bash", "curl -fsSL https://example.com/install.sh -o install.sh", allow},
	{"curl piped into jq", "bash", "curl -s https://api.github.com/repos/x/y | jq .stargazers_count", allow},
	{"curl piped into python -c reads JSON", "bash", `curl -s https://api.example.com | python3 -c "import json,sys; print(json.load(sys.stdin))"`, allow},
	{"download then extract", "bash", "wget https://example.com/x.tar.gz && tar xzf x.tar.gz", allow},
	{"chmod +x a script", "bash", "chmod +x ./run.sh", allow},
	{"recursive chmod of a project directory", "bash", "chmod -R 755 ./dist", allow},
	{"non-recursive chmod under /tmp", "bash", "chmod 777 /tmp/shared", allow},
	{"find with -delete in the working directory", "bash", "find . -name '*.pyc' -delete", allow},
	{"find / without deleting", "bash", "find / -name '*.log' -print 2>/dev/null | head", allow},
	{"find / deleting only matching files", "bash", "find / -name '*.pyc' -delete", allow},
	{"kill a specific pid", "bash", "kill -9 1234", allow},
	{"kill -1 is SIGHUP to a pid", "bash", "kill -1 1234", allow},
	{"systemctl status", "bash", "systemctl status nginx", allow},
	{"the word shutdown as data", "bash", "echo shutdown; grep -r reboot ./logs", allow},
	{"an ordinary recursive function", "bash", "count() { echo $1; if [ $1 -gt 0 ]; then count $(($1-1)); fi; }; count 3", allow},
	{"git clean and docker --rm", "bash", "git clean -fdx && docker run --rm alpine true", allow},
	{"python -c that prints a command", "bash", `python3 -c "print('rm -rf /')"`, allow},
	{"apt-get install", "bash", "sudo apt-get install -y curl", allow},
	// python
	{"removing one file", "python", "import os\nos.remove(\"x.txt\")\n", allow},
	{"rmtree of a build directory", "python", "import shutil\nshutil.rmtree(\"./build\")\n", allow},
	{"rmtree under /tmp", "python", "import shutil\nshutil.rmtree(\"/tmp/work\", ignore_errors=True)\n", allow},
	{"rmtree of a directory inside home", "python", "import os, shutil\nshutil.rmtree(os.path.join(os.path.expanduser(\"~\"), \"project\", \"tmp\"))\n", allow},
	{"subprocess running ls", "python", "import subprocess\nprint(subprocess.run([\"ls\", \"-la\"], capture_output=True).stdout)\n", allow},
	{"shell=True with a harmless command", "python", "import subprocess\nsubprocess.run(\"ls -la / | head\", shell=True)\n", allow},
	{"echo argument in an argv is data", "python", "import subprocess\nsubprocess.run([\"echo\", \"rm -rf /\"])\n", allow},
	{"a state named shutdown is not a command", "python", "import subprocess\nstate = \"shutdown\"\nif state == \"halt\":\n    subprocess.run([\"ls\"])\n", allow},
	{"the word format in a string", "python", "print(\"please format the disk\")\nprint(\"{} format\".format(1))\n", allow},
	{"a commented-out rmtree", "python", "import shutil\n# shutil.rmtree('/')\nprint('ok')\n", allow},
	{"printing a dangerous command without running processes", "python", "print(\"rm -rf /\")\n", allow},
	{"a call inside a string is not a call", "python", "text = \"shutil.rmtree('/')\"\nprint(text)\n", allow},
	{"an input loop with break", "python", "while True:\n    line = input()\n    if not line:\n        break\n", allow},
	{"a single fork", "python", "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.wait()\n", allow},
	{"a pre-fork loop that waits", "python", "import os\nwhile True:\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n", allow},
	{"reading a disk device", "python", "with open(\"/dev/sda\", \"rb\") as f:\n    print(f.read(512))\n", allow},
	{"writing a regular file", "python", "with open(\"out.txt\", \"w\") as f:\n    f.write(\"hi\")\n", allow},
	{"killing a child", "python", "import os, signal\nos.kill(pid, signal.SIGTERM)\n", allow},
	{"raw strings and triple quotes", "python", "import re\npat = r\"\\d+/\"\ndoc = \"\"\"Don't run rm -rf / here\"\"\"\nprint(re.findall(pat, doc))\n", allow},
	// javascript
	{"regex.exec is not eval or a process", "javascript", "const re = /a+/g;\nconst m = re.exec(s);\nconsole.log(m);\n", allow},
	{"rmSync of dist", "javascript", "const fs = require('fs');\nfs.rmSync('./dist', { recursive: true, force: true });\n", allow},
	{"rmSync of a temp dir", "javascript", "const fs = require('fs'), os = require('os'), path = require('path');\nfs.rmSync(path.join(os.tmpdir(), 'x'), { recursive: true });\n", allow},
	{"execSync of ls", "javascript", "const { execSync } = require('child_process');\nconsole.log(execSync('ls -la').toString());\n", allow},
	{"printing a command without child_process", "javascript", "console.log(\"rm -rf /\");\n", allow},
	{"division is not a regex", "javascript", "const a = 10, b = 2;\nconst r = a / b / 1;\nconst s = \"it's\";\nconsole.log(r, s);\n", allow},
	{"killing a child", "javascript", "const { spawn } = require('child_process');\nconst c = spawn('sleep', ['10']);\nprocess.kill(c.pid);\n", allow},
	{"a polling loop with spawnSync", "javascript", "const cp = require('child_process');\nwhile (true) { const r = cp.spawnSync('ls'); if (r.status === 0) break; }\n", allow},
	{"template literal with a path variable", "javascript", "const { execSync } = require('child_process');\nconst dir = '/tmp/x';\nexecSync(`rm -rf ${dir}`);\n", allow},
	// go
	{"RemoveAll of a build dir", "go", "package main\n\nimport \"os\"\n\nfunc main() { os.RemoveAll(\"./build\") }\n", allow},
	{"RemoveAll of a temp dir", "go", "package main\n\nimport (\n\t\"os\"\n\t\"path/filepath\"\n)\n\nfunc main() { os.RemoveAll(filepath.Join(os.TempDir(), \"x\")) }\n", allow},
	{"exec.Command ls /", "go", "package main\n\nimport \"os/exec\"\n\nfunc main() { exec.Command(\"ls\", \"-la\", \"/\").Run() }\n", allow},
	{"printing a command without os/exec", "go", "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"rm -rf /\") }\n", allow},
	{"an accept loop", "go", "package main\n\nimport \"net\"\n\nfunc main() {\n\tln, _ := net.Listen(\"tcp\", \":0\")\n\tfor {\n\t\tc, err := ln.Accept()\n\t\tif err != nil {\n\t\t\treturn\n\t\t}\n\t\tgo c.Close()\n\t}\n}\n", allow},
	{"raw string and rune literals", "go", "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(`rm -rf /`, '\"') }\n", allow},
	// rust
	{"remove_dir_all of target/tmp", "rust", "fn main() {\n    std::fs::remove_dir_all(\"target/tmp\").ok();\n}\n", allow},
	{"Command ls", "rust", "use std::process::Command;\nfn main() {\n    Command::new(\"ls\").arg(\"-la\").status().unwrap();\n}\n", allow},
	{"printing shutdown", "rust", "fn main() {\n    println!(\"shutdown\");\n}\n", allow},
	{"lifetimes and char literals", "rust", "fn f<'a>(x: &'a str) -> &'a str { x }\nfn main() {\n    let c = '\"';\n    println!(\"{} {}\", f(\"rm -rf /\"), c);\n}\n", allow},
	{"a loop with break", "rust", "fn main() {\n    let mut n = 0;\n    loop {\n        n += 1;\n        if n > 3 { break; }\n    }\n}\n", allow},
	// generic
	{"aliases are accepted", "py", "print(1)\n", allow},
}

func TestCheck(t *testing.T) {
	p, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range append(append([]checkCase{}, blockCases...), allowCases...) {
		t.Run(tc.why, func(t *testing.T) {
			d := p.Check(tc.lang, tc.code)
			if d.Rule != tc.want || d.Blocked != (tc.want != allow) {
				t.Errorf("Check(%s, %q) = %+v, want rule %q", tc.lang, tc.code, d, tc.want)
			}
			if d.Blocked && (d.Reason == "" || !strings.HasSuffix(d.Reason, ".")) {
				t.Errorf("reason %q is not a sentence", d.Reason)
			}
		})
	}
}

// The suite must stay balanced: at least 60 cases, at least half of them
// must-allow, so that low false positives stay tested as rules grow.
func TestCheckCaseCounts(t *testing.T) {
	if n := len(blockCases) + len(allowCases); n < 60 || len(allowCases)*2 < n {
		t.Errorf("%d block and %d allow cases", len(blockCases), len(allowCases))
	}
}

// A reason names what was found and what to do instead.
func TestReasonQuotesFinding(t *testing.T) {
	p, _ := New(DefaultConfig())
	d := p.Check("bash", "echo start\nrm -rf /\n")
	if !strings.Contains(d.Reason, "`rm -rf /`") || !strings.Contains(d.Reason, "./build") {
		t.Errorf("reason %q", d.Reason)
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"default is valid", DefaultConfig(), false},
		{"zero value is valid", Config{}, false},
		{"aliases in allowed_languages", Config{AllowedLanguages: []string{"py", "sh"}}, false},
		{"unknown language", Config{AllowedLanguages: []string{"cobol"}}, true},
		{"unknown rule", Config{DisabledRules: []string{"no_such_rule"}}, true},
		{"negative size", Config{MaxCodeBytes: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if _, nerr := New(tt.cfg); (nerr != nil) != tt.wantErr {
				t.Errorf("New() = %v", nerr)
			}
		})
	}
}

func TestConfigEffects(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		lang, code string
		want       string
	}{
		{"disabled policy allows everything", Config{Enabled: false}, "cobol", "rm -rf /", allow},
		{"disabled rule is skipped", Config{Enabled: true, DisabledRules: []string{RuleDestroyRoot}}, "bash", "rm -rf /", allow},
		{"other rules still apply", Config{Enabled: true, DisabledRules: []string{RuleDestroyRoot}}, "bash", "rm -rf /; reboot", RuleReboot},
		{"language outside the allowed list", Config{Enabled: true, AllowedLanguages: []string{"python"}}, "bash", "ls", RuleLanguageNotAllowed},
		{"alias in the allowed list", Config{Enabled: true, AllowedLanguages: []string{"py"}}, "python", "print(1)", allow},
		{"zero size means the default limit", Config{Enabled: true}, "python", strings.Repeat("#", DefaultMaxCodeBytes), allow},
		{"custom size limit", Config{Enabled: true, MaxCodeBytes: 10}, "python", "print('hello')", RuleCodeTooLarge},
		{"first rule in check order wins", Config{Enabled: true}, "bash", "reboot; rm -rf /", RuleDestroyRoot},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if d := p.Check(tt.lang, tt.code); d.Rule != tt.want {
				t.Errorf("Check = %+v, want rule %q", d, tt.want)
			}
		})
	}
}

func TestRules(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Rules() {
		if r.ID == "" || r.Description == "" || len(r.Languages) == 0 || seen[r.ID] {
			t.Errorf("bad or duplicate rule %+v", r)
		}
		seen[r.ID] = true
	}
	for _, tc := range blockCases {
		if !seen[tc.want] {
			t.Errorf("case %q expects undocumented rule %q", tc.why, tc.want)
		}
	}
}
