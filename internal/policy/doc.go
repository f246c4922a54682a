// Package policy decides, before any sandbox is started, whether a piece of
// code may run.
//
// A [Policy] is built from a [Config] and asked to [Policy.Check] one
// program in one of the five supported languages. The answer is a
// [Decision]: either allowed, or blocked with a stable rule id (see [Rules])
// and a reason written for the model or person who sent the code: what was
// found and what to do instead.
//
// The policy is a guardrail against obviously destructive commands that a
// model may produce by mistake (rm -rf /, fork bombs, writing to disk
// devices, curl | sh). It is not a security boundary: obfuscated code gets
// through, and the sandbox is what contains it. Rules are therefore tuned
// for few false positives; every rule's must-allow cases are in the tests.
//
// How code is read:
//
//   - Comments are ignored in every language: "# never run rm -rf /" is
//     allowed.
//   - Bash is parsed with mvdan.cc/sh/v3/syntax and every simple command
//     in the tree is checked wherever it sits: in functions, subshells,
//     brace groups, pipelines, loops, command and process substitutions
//     and unquoted here-document bodies. Quoting is removed, prefixes such
//     as sudo, env and command are skipped, and variables assigned a
//     literal value (x=/; rm -rf $x) or with a default (${x:-/}) are
//     substituted. The text given to sh -c, bash -c, eval, python -c,
//     node -e and to here-documents or here-strings fed to a shell or
//     interpreter is checked too, to maxDepth levels. Arguments of echo
//     and printf are data and are not checked, unless the output is piped
//     into a shell (echo "rm -rf /" | sh is blocked). Text that does not
//     parse, or is too large or nested too deeply to parse in bounded
//     work, is read by a hand lexer instead, which splits commands at
//     operators and never fails.
//   - Go is parsed with go/parser: calls are resolved through the imports
//     (a local variable named os is not the os package), constants and
//     variables assigned literals are followed, and the argv of
//     os/exec.Command, syscall.Exec and the like is checked as a shell
//     command. Go that does not parse, even as a bare list of statements,
//     is not checked: it does not build.
//   - In Python, JavaScript, Go and Rust, library calls are matched with
//     their arguments (shutil.rmtree("/"), fs.rmSync("/"), os.RemoveAll("/"),
//     std::fs::remove_dir_all("/")); in Python, JavaScript and Rust by
//     patterns over the text with comments and literals told apart by a
//     small tokenizer. When the program uses a process API
//     (subprocess, os.system, child_process, os/exec, std::process::Command)
//     every string literal in it, and every run of adjacent literals such as
//     ["rm", "-rf", "/"], is also checked as a shell command. A string that
//     merely mentions "rm -rf /" in a program that runs no processes is
//     allowed.
//
// Check order: language_not_allowed, empty_code, code_too_large, then the
// content rules in the order Rules lists them; the first enabled rule that
// matches decides. Rules named in Config.DisabledRules are skipped; with
// language_not_allowed disabled, code in a language other than the five is
// allowed without content checks, since there is nothing to parse it as. A
// Config with Enabled=false allows everything, including code of any size
// and language: the service must enforce its own hard limits.
package policy
