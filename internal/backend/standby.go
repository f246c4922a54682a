package backend

import "context"

// StandbyHolder is implemented by a backend that keeps sandboxes made ahead of the
// restores they will receive (the gVisor backend's standby containers): they are
// processes and memory of the host like any sandbox, so the service counts them in
// its bounds (max_sandboxes, the memory budget) and has them give way first when a
// start needs the room.
type StandbyHolder interface {
	// Standbys reports the standbys held or being made, and the sum of their
	// memory limits in bytes.
	Standbys() (n int, memoryBytes int64)
	// SetStandbyRoom installs the check the backend makes before it makes a
	// standby of memoryBytes: none is made while room returns false. The standby
	// asked about is already counted in Standbys when room is called (so the room
	// it takes is taken at once), and room must not call back into the backend.
	SetStandbyRoom(room func(memoryBytes int64) bool)
	// DropStandbys destroys the standbys held (and those being made, once made),
	// and reports how many it dropped.
	DropStandbys(ctx context.Context) int
}
