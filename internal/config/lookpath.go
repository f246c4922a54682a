package config

import "os/exec"

var execLookPath = exec.LookPath
