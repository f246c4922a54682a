package codeblock

import "testing"

func TestCanonical(t *testing.T) {
	tests := []struct {
		in    string
		want  string
		known bool
	}{
		{"py", "python", true},
		{"Python3", "python", true},
		{"python", "python", true},
		{"js", "javascript", true},
		{"node", "javascript", true},
		{"NodeJS", "javascript", true},
		{"mjs", "javascript", true},
		{"JavaScript", "javascript", true},
		{"sh", "bash", true},
		{"shell", "bash", true},
		{"zsh", "bash", true},
		{"BASH", "bash", true},
		{"rs", "rust", true},
		{"rust", "rust", true},
		{"golang", "go", true},
		{"Go", "go", true},
		{" go ", "go", true},
		{"{.python}", "python", true},
		{"python:main.py", "python", true},
		{"js,linenos", "javascript", true},
		{"COBOL", "cobol", false},
		{"typescript", "typescript", false}, // not JavaScript: would not run as-is
		{"python2", "python2", false},       // not the interpreter we run
		{"", "", false},
	}
	for _, tt := range tests {
		got, known := Canonical(tt.in)
		if got != tt.want || known != tt.known {
			t.Errorf("Canonical(%q) = %q, %v; want %q, %v", tt.in, got, known, tt.want, tt.known)
		}
	}
}

func TestDetect(t *testing.T) {
	tests := []struct {
		name string
		code string
		want string // "" means ok=false
	}{
		{"python shebang", "#!/usr/bin/env python3\nx = 1\n", "python"},
		{"node shebang", "#!/usr/bin/env node\nx = 1\n", "javascript"},
		{"bash shebang", "#!/bin/bash\nx=1\n", "bash"},
		{"sh shebang", "#!/bin/sh\nx=1\n", "bash"},
		{"python def", "def f(x):\n    return x\n", "python"},
		{"python import and print", "import os\nprint(os.getcwd())\n", "python"},
		{"python from import", "from pathlib import Path\n", "python"},
		{"python main guard", "if __name__ == \"__main__\":\n    main()\n", "python"},
		{"javascript console.log", "console.log('hi');\n", "javascript"},
		{"javascript const arrow", "const f = (x) => x * 2;\n", "javascript"},
		{"javascript require", "const fs = require('fs');\n", "javascript"},
		{"javascript esm import", "import fs from 'node:fs';\n", "javascript"},
		{"bash echo", "echo hello\n", "bash"},
		{"bash variables and commands", "NAME=x\nls -la $NAME\n", "bash"},
		{"bash if", "if [ -f x ]; then\n  cat x\nfi\n", "bash"},
		{"rust main", "fn main() {\n    println!(\"hi\");\n}\n", "rust"},
		{"rust use", "use std::fs;\nlet mut v = vec![1];\n", "rust"},
		{"go main", "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n", "go"},
		{"go without package", "func add(a, b int) int {\n\treturn a + b\n}\n", "go"},
		{"prose is unsure", "hello world\n", ""},
		{"assignment alone is unsure", "x = 1\n", ""},
		{"json is unsure", "{\"a\": 1}\n", ""},
		{"empty", "  \n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Detect(tt.code)
			if ok != (tt.want != "") || got != tt.want {
				t.Errorf("Detect(%q) = %q, %v; want %q", tt.code, got, ok, tt.want)
			}
		})
	}
}
