# Kindling's mounter: binds a function's code into an instance's mount namespace at load time, with no
# process spawn on the request path (a spawn costs ~10 ms on these VMs; this costs well under 1 ms).
#
# Why perl: binding into another mount namespace needs setns(2) then mount(2) in a single-threaded
# process; node has neither call and is multi-threaded. perl-base is Essential in Debian (always there),
# and its syscall() reaches both. Run as root by the process backend, one per platform.
#
# Protocol (lines on stdin/stdout, tab-separated): `<tag>\t<pid>\t<src>\t<dst>\t<lo>` → `<tag>\tok` or
# `<tag>\terror\t<message>`. Enters /proc/<pid>/ns/mnt, binds <src> (a path inside that namespace) onto
# <dst> read-only, returns to its own namespace; with <lo> = 1 it also enters /proc/<pid>/ns/net and sets
# `lo` up there (what `ip link set lo up` does, without a process). Syscall numbers come from the caller.
# It exits when stdin closes (the platform went away).
use strict;
use warnings;
$| = 1;
my ($SYS_MOUNT, $SYS_SETNS) = @ARGV;
die "usage: mounter.pl <SYS_mount> <SYS_setns>\n" unless defined $SYS_SETNS;
my ($MS_RDONLY, $MS_REMOUNT, $MS_BIND, $CLONE_NEWNS, $CLONE_NEWNET) = (1, 32, 4096, 0x00020000, 0x40000000);
my ($SIOCGIFFLAGS, $SIOCSIFFLAGS, $IFF_UP) = (0x8913, 0x8914, 1);
open(my $home, '<', '/proc/self/ns/mnt') or die "cannot open its own mount namespace: $!\n";
open(my $homeNet, '<', '/proc/self/ns/net') or die "cannot open its own network namespace: $!\n";

# `lo` up in the network namespace of $pid; '' or an error message.
sub lo_up {
  my ($pid) = @_;
  open(my $ns, '<', "/proc/$pid/ns/net") or return "open /proc/$pid/ns/net: $!";
  syscall($SYS_SETNS, fileno($ns), $CLONE_NEWNET) == 0 or return "setns net: $!";
  my $err = '';
  # struct ifreq: the name, then the flags (40 bytes in all).
  if (!socket(my $s, 2, 2, 0)) { $err = "socket: $!" }
  else {
    my $req = pack('a16 x24', 'lo');
    if (!ioctl($s, $SIOCGIFFLAGS, $req)) { $err = "SIOCGIFFLAGS: $!" }
    else {
      my $flags = unpack('x16 s', $req) | $IFF_UP;
      $req = pack('a16 s x22', 'lo', $flags);
      $err = "SIOCSIFFLAGS: $!" unless ioctl($s, $SIOCSIFFLAGS, $req);
    }
    close($s);
  }
  syscall($SYS_SETNS, fileno($homeNet), $CLONE_NEWNET) == 0 or die "cannot return to its own network namespace: $!\n";
  return $err;
}
print "ready\n";
while (my $line = <STDIN>) {
  chomp $line;
  my ($tag, $pid, $src, $dst, $lo) = split /\t/, $line;
  next unless defined $dst;
  my $err = '';
  if ($pid !~ /^[1-9][0-9]*$/) {
    $err = 'bad pid';
  } elsif (open(my $ns, '<', "/proc/$pid/ns/mnt")) {
    if (syscall($SYS_SETNS, fileno($ns), $CLONE_NEWNS) != 0) {
      $err = "setns: $!";
    } else {
      if (syscall($SYS_MOUNT, $src, $dst, 0, $MS_BIND, 0) != 0) { $err = "bind $src: $!" }
      elsif (syscall($SYS_MOUNT, 0, $dst, 0, $MS_REMOUNT | $MS_BIND | $MS_RDONLY, 0) != 0) { $err = "read-only remount: $!" }
      # Never go on in an instance's namespace.
      syscall($SYS_SETNS, fileno($home), $CLONE_NEWNS) == 0 or die "cannot return to its own mount namespace: $!\n";
    }
    close($ns);
    $err = lo_up($pid) if $err eq '' && defined $lo && $lo eq '1';
  } else {
    $err = "open /proc/$pid/ns/mnt: $!";
  }
  print $err eq '' ? "$tag\tok\n" : "$tag\terror\t$err\n";
}
