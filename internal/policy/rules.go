package policy

import (
	"fmt"
	"slices"
)

// Rule ids. They are stable: API clients and configs refer to them.
const (
	RuleLanguageNotAllowed = "language_not_allowed"
	RuleEmptyCode          = "empty_code"
	RuleCodeTooLarge       = "code_too_large"
	RuleDestroyRoot        = "destroy_root"
	RuleMkfs               = "mkfs"
	RuleDDDevice           = "dd_device"
	RuleOverwriteDevice    = "overwrite_device"
	RuleForkBomb           = "fork_bomb"
	RulePipeToShell        = "pipe_to_shell"
	RuleChmodRoot          = "chmod_root"
	RuleShutdown           = "shutdown"
	RuleReboot             = "reboot"
	RuleKillAll            = "kill_all"
)

// RuleInfo describes a rule for documentation and the API.
type RuleInfo struct {
	ID          string   `json:"id"`
	Languages   []string `json:"languages"`
	Description string   `json:"description"`
}

type rule struct {
	RuleInfo
	// reason builds the Decision.Reason from the text that matched; unused
	// by the first three rules, which build their own.
	reason func(found string) string
}

func because(format string) func(string) string {
	return func(found string) string { return fmt.Sprintf(format, found) }
}

// rules in check order.
var rules = []rule{
	{RuleInfo: RuleInfo{RuleLanguageNotAllowed, languages,
		"The language is not one of the supported languages or not in allowed_languages."}},
	{RuleInfo: RuleInfo{RuleEmptyCode, languages,
		"The code is empty or only white space."}},
	{RuleInfo: RuleInfo{RuleCodeTooLarge, languages,
		"The code is larger than max_code_bytes."}},
	{RuleInfo{RuleDestroyRoot, languages,
		"Recursively deletes /, a top-level system directory or a home directory: rm -rf / ~ $HOME /home/user /etc, find / -delete, shutil.rmtree, fs.rmSync, os.RemoveAll, fs::remove_dir_all, or rm run through a process API."},
		because("Found `%s`, which recursively deletes the root filesystem, a system directory or a home directory; delete only the paths your program created, such as ./build or /tmp/work.")},
	{RuleInfo{RuleMkfs, languages,
		"Creates a filesystem on a device: mkfs, mkfs.*, mke2fs, mkswap with a /dev/ argument."},
		because("Found `%s`, which formats a disk device; to experiment with filesystems, create an image file (truncate -s 64M disk.img) and format that instead.")},
	{RuleInfo{RuleDDDevice, languages,
		"dd writing to a device (of=/dev/sda and the like; /dev/null is fine)."},
		because("Found `%s`, which writes raw data onto a device; write to a regular file instead, e.g. dd if=/dev/zero of=./file bs=1M count=10.")},
	{RuleInfo{RuleOverwriteDevice, languages,
		"Writes to a disk or memory device by redirection, tee, cp, shred, wipefs, or by opening it for writing (/dev/sda, /dev/nvme0n1, /dev/mem, ...)."},
		because("Found `%s`, which overwrites a disk or memory device; write to a regular file or /dev/null instead.")},
	{RuleInfo{RuleForkBomb, languages,
		"Creates processes without bound: :(){ :|:& };: and named variants, fork while fork, os.fork() in an endless loop, spawning itself in an endless loop."},
		because("Found `%s`, which creates processes until the machine runs out; start a fixed number of workers (e.g. multiprocessing.Pool(4)) and wait for them.")},
	{RuleInfo{RulePipeToShell, languages,
		"Runs a downloaded script without looking at it: curl ... | sh, wget -O- ... | bash, sh -c \"$(curl ...)\", bash <(curl ...)."},
		because("Found `%s`, which runs a downloaded script sight unseen; download it to a file, inspect it, then run it, or install the tool with a package manager.")},
	{RuleInfo{RuleChmodRoot, languages,
		"Recursively changes permissions or ownership of /, a system directory or a home directory: chmod -R 777 /, chown -R."},
		because("Found `%s`, which recursively changes permissions or owners of system or home files; change only the files your program created, e.g. chmod -R u+rwX ./out.")},
	{RuleInfo{RuleShutdown, languages,
		"Powers off the machine: shutdown, poweroff, halt, init 0, systemctl poweroff."},
		because("Found `%s`, which would power off the sandbox; to stop, just let the program exit (exit 0 or sys.exit(0)).")},
	{RuleInfo{RuleReboot, languages,
		"Reboots the machine: reboot, init 6, systemctl reboot, the reboot(2) system call, writing to /proc/sysrq-trigger."},
		because("Found `%s`, which would reboot the sandbox; to start over, let the program exit and run it again.")},
	{RuleInfo{RuleKillAll, languages,
		"Kills every process or init: kill -9 -1, kill 1, os.kill(-1, ...), process.kill(-1)."},
		because("Found `%s`, which kills every process in the sandbox or its init; kill only the process ids your program started.")},
}

// Rules returns every rule in check order.
func Rules() []RuleInfo {
	out := make([]RuleInfo, len(rules))
	for i, r := range rules {
		out[i] = r.RuleInfo
		out[i].Languages = slices.Clone(r.Languages)
	}
	return out
}

func ruleIndex(id string) int {
	return slices.IndexFunc(rules, func(r rule) bool { return r.ID == id })
}
