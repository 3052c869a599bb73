"""The local composition: the whole job on one machine, VMs emulated by real sshd on loopback."""
