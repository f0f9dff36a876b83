package runc

// Isolates reports that machines run isolated: each in its own
// namespaces, user ids, cgroup and disk.
func (d *Driver) Isolates() bool { return true }
