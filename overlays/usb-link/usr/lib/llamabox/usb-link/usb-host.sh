#!/usr/lib/llamabox/network/busybox sh
# Host mode: a phone's own "USB tethering" (Android: RNDIS or NCM; iPhone: ipheth or
# NCM) is a USB network device under one of the box's USB host controllers, and the
# phone runs the DHCP server. Every 2 s this looks for such interfaces by their driver
# in sysfs and runs a DHCP client on each new one; a client whose interface went away
# is stopped. The leases are applied by usb-host.script.
bb=/usr/lib/llamabox/network/busybox
run=/run/usb-link/host
$bb mkdir -p $run
$bb rm -f $run/*.pid

while :; do
    for dev in /sys/class/net/*; do
        i=${dev##*/}
        driver=$($bb readlink $dev/device/driver 2>/dev/null)
        case "${driver##*/}" in
            cdc_ether | cdc_ncm | rndis_host | ipheth | cdc_eem | cdc_subset) ;;
            *) continue ;;
        esac
        path=$($bb readlink -f $dev/device)
        # The host side of a dummy_hcd loop (the QEMU board's UDC) is the box's own
        # gadget seen from the other end: asking it for an address would make the box
        # its own client.
        case "$path" in */dummy_hcd.*) continue ;; esac
        pid=$($bb cat $run/$i.pid 2>/dev/null)
        [ -n "$pid" ] && $bb kill -0 "$pid" 2>/dev/null && continue
        echo "usb-host: $i (${driver##*/}, $path): asking the phone for an address"
        $bb udhcpc -f -R -t 0 -i "$i" -s /usr/lib/llamabox/usb-link/usb-host.script &
        echo $! > $run/$i.pid
    done
    for pidfile in $run/*.pid; do
        [ -e "$pidfile" ] || continue
        i=${pidfile##*/}
        i=${i%.pid}
        if [ ! -e /sys/class/net/$i ]; then
            echo "usb-host: $i is gone"
            $bb kill "$($bb cat $pidfile)" 2>/dev/null
            $bb rm -f "$pidfile"
        fi
    done
    $bb sleep 2
done
