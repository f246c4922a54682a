package gvisor

import "github.com/vmexec/vmexec/internal/backend"

// The OCI runtime spec, only the parts vmexec sets.
type ociSpec struct {
	OCIVersion string     `json:"ociVersion"`
	Process    ociProcess `json:"process"`
	Root       ociRoot    `json:"root"`
	Hostname   string     `json:"hostname"`
	Mounts     []ociMount `json:"mounts"`
	Linux      ociLinux   `json:"linux"`
}

type ociProcess struct {
	Args         []string        `json:"args"`
	Env          []string        `json:"env"`
	Cwd          string          `json:"cwd"`
	User         ociUser         `json:"user"`
	Capabilities ociCapabilities `json:"capabilities"`
	Rlimits      []ociRlimit     `json:"rlimits,omitempty"`
}

type ociUser struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type ociCapabilities struct {
	Bounding  []string `json:"bounding"`
	Effective []string `json:"effective"`
	Permitted []string `json:"permitted"`
}

type ociRlimit struct {
	Type string `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type ociLinux struct {
	CgroupsPath string         `json:"cgroupsPath"`
	Resources   ociResources   `json:"resources"`
	Namespaces  []ociNamespace `json:"namespaces"`
}

type ociResources struct {
	CPU    *ociCPU    `json:"cpu,omitempty"`
	Memory *ociMemory `json:"memory,omitempty"`
	Pids   *ociPids   `json:"pids,omitempty"`
}

// ociCPU is a CFS bandwidth limit: at most Quota µs of CPU time per Period µs.
type ociCPU struct {
	Quota  int64  `json:"quota"`
	Period uint64 `json:"period"`
}

type ociMemory struct {
	Limit int64 `json:"limit"`
}

type ociPids struct {
	Limit int64 `json:"limit"`
}

type ociNamespace struct {
	Type string `json:"type"`
}

// agentCaps are what the guest agent needs as PID 1: to drop to the run user, own
// files it creates for runs, and kill runs' process groups. User code runs as uid 1000
// with none of them.
var agentCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_SYS_RESOURCE",
}

// sentryOverheadBytes is added to the sandbox's memory limit for gVisor's own kernel,
// so that the guest's processes get the memory the spec promises.
const sentryOverheadBytes = 128 << 20

// cpuPeriod is the CFS period of the CPU quota, the kernel's default (100 ms).
const cpuPeriod = 100_000

// cpuQuota is the CFS quota for cpus cores per cpuPeriod; 0 for no quota. The kernel
// refuses quotas under 1 ms.
func cpuQuota(cpus float64) int64 {
	if cpus <= 0 {
		return 0
	}
	return max(int64(cpus*cpuPeriod), 1000)
}

func (b *Backend) ociSpec(spec backend.Spec) ociSpec {
	s := ociSpec{
		OCIVersion: "1.0.2",
		Process: ociProcess{
			Args:         []string{AgentPathInSandbox},
			Env:          append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "VMEXEC_SANDBOX_ID=" + spec.ID}, b.cfg.GuestEnv...),
			Cwd:          "/",
			Capabilities: ociCapabilities{Bounding: agentCaps, Effective: agentCaps, Permitted: agentCaps},
			Rlimits:      []ociRlimit{{Type: "RLIMIT_NOFILE", Hard: 65536, Soft: 65536}},
		},
		Root:     ociRoot{Path: spec.Template.RootFS},
		Hostname: "sandbox",
		Mounts: []ociMount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
			{Destination: AgentPathInSandbox, Type: "bind", Source: b.cfg.AgentPath, Options: []string{"rbind", "ro"}},
		},
		Linux: ociLinux{
			CgroupsPath: b.cfg.cgroupPath(spec.ID),
			Namespaces:  []ociNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "network"}},
		},
	}
	if q := cpuQuota(b.cfg.CPUs); q > 0 {
		s.Linux.Resources.CPU = &ociCPU{Quota: q, Period: cpuPeriod}
	}
	if spec.MemoryBytes > 0 {
		s.Linux.Resources.Memory = &ociMemory{Limit: spec.MemoryBytes + sentryOverheadBytes}
	}
	if spec.MaxPIDs > 0 {
		s.Linux.Resources.Pids = &ociPids{Limit: spec.MaxPIDs}
	}
	return s
}
