#!/usr/lib/llamabox/network/busybox sh
# The USB gadget: what an iPhone, iPad, Mac or Linux laptop sees when the box is plugged
# in over USB-C. A configfs composite gadget with two configurations, CDC-NCM first
# (Linux, macOS, iPadOS and Windows 11 have drivers for it) and CDC-ECM second (older
# macOS), on the first USB device controller (in QEMU: dummy_hcd). Both functions'
# interfaces are ports of the bridge usblink0, so the box has one address on the link
# whichever configuration the host picks; then udhcpd serves the link (execs).
# Android hosts ignore gadget network functions: they are reached in host mode
# (usb-host.sh, the phone's own USB tethering).
bb=/usr/lib/llamabox/network/busybox
cfg=/sys/kernel/config
g=$cfg/usb_gadget/llamabox
br=usblink0
# A /28 (14 hosts) in 10.55.0.0: a point-to-point link needs two addresses, and a small
# odd net is unlikely to overlap the phone's other networks (home LANs in 192.168.x and
# 10.0.x, iPhone hotspots in 172.20.10.0/28, Android tethering in 192.168.42-49.x,
# carrier NAT in 100.64/10). The phone gets 10.55.0.2-14 by DHCP.
addr=10.55.0.1/28
# Link-local fallback (RFC 3927): a host that ignores or misses DHCP picks a random
# 169.254/16 address and probes it with ARP, so it avoids this one; mDNS still finds us.
linklocal=169.254.55.1/16
state=/var/lib/usb-link
run=/run/usb-link

log() { echo "usb-gadget: $*"; }

[ -d $cfg/usb_gadget ] || $bb mount -t configfs configfs $cfg || exit 1
udc=$($bb ls /sys/class/udc 2>/dev/null | $bb head -n 1)
if [ -z "$udc" ]; then
    log "no USB device controller: no gadget on this board"
    exit 0
fi

# Stable MAC addresses (locally administered, unicast), made once per device: with a
# random pair per boot, a Mac or iPhone would see a new network interface every time.
if [ ! -s $state/macs ]; then
    $bb mkdir -p $state
    macs=""
    for n in 1 2 3 4; do
        m=$($bb hexdump -n 5 -e '5/1 ":%02x"' /dev/urandom)
        macs="$macs 02$m"
    done
    echo $macs > $state/macs.new && $bb mv $state/macs.new $state/macs
fi
read ncm_dev ncm_host ecm_dev ecm_host < $state/macs

if [ ! -d $g ]; then
    $bb mkdir $g || exit 1
    echo 0x1d6b > $g/idVendor        # Linux Foundation
    echo 0x0104 > $g/idProduct       # Multifunction Composite Gadget
    echo 0x0100 > $g/bcdDevice
    echo 0x0200 > $g/bcdUSB
    # Miscellaneous / common class / interface association: functions describe themselves.
    echo 0xEF > $g/bDeviceClass
    echo 0x02 > $g/bDeviceSubClass
    echo 0x01 > $g/bDeviceProtocol
    $bb mkdir $g/strings/0x409
    echo "Llama Box" > $g/strings/0x409/manufacturer
    echo "Llama Box" > $g/strings/0x409/product
    echo "$ncm_dev" | $bb tr -d : > $g/strings/0x409/serialnumber
    $bb mkdir $g/functions/ncm.usb0 $g/functions/ecm.usb0
    echo $ncm_dev > $g/functions/ncm.usb0/dev_addr
    echo $ncm_host > $g/functions/ncm.usb0/host_addr
    echo $ecm_dev > $g/functions/ecm.usb0/dev_addr
    echo $ecm_host > $g/functions/ecm.usb0/host_addr
    n=1
    for f in ncm ecm; do
        c=$g/configs/c.$n
        $bb mkdir -p $c/strings/0x409
        echo "$f" | $bb tr a-z A-Z > $c/strings/0x409/configuration
        echo 250 > $c/MaxPower
        $bb ln -s $g/functions/$f.usb0 $c/
        n=$((n + 1))
    done
fi
if [ "$($bb cat $g/UDC)" != "$udc" ]; then
    echo "$udc" > $g/UDC || exit 1
fi

# The functions' network interfaces exist once the gadget is bound.
[ -d /sys/class/net/$br ] || $bb brctl addbr $br || exit 1
echo 0 > /sys/class/net/$br/bridge/forward_delay
for f in ncm ecm; do
    ifname=$($bb cat $g/functions/$f.usb0/ifname)
    [ -e /sys/class/net/$ifname/brport ] || $bb brctl addif $br "$ifname" || exit 1
    $bb ip link set "$ifname" up
done
$bb ip link set $br up
$bb ip addr replace $addr dev $br
$bb ip addr replace $linklocal dev $br
$bb mkdir -p $run
$bb touch $run/udhcpd.leases
log "gadget on $udc (NCM: $($bb cat $g/functions/ncm.usb0/ifname), ECM: $($bb cat $g/functions/ecm.usb0/ifname)); $br has $addr and $linklocal"
exec $bb udhcpd -f /usr/lib/llamabox/usb-link/udhcpd.conf
