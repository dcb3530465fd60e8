#!/usr/bin/env bash
# Zero-downtime restart of tracker under systemd with two instances of the template unit
# tracker@.service (a copy of systemd/tracker.service; docs/operations.md, "Under systemd").
#
#   tracker-handoff.sh            # blue → green or green → blue, whichever runs now
#
# The new instance binds the port (SO_REUSEPORT) and waits for the running one's journal locks;
# only then is the running one stopped: it accepts what is queued on its sockets, answers what
# it received, drains its rings, syncs and exits; the new one takes the locks and reports READY.
set -euo pipefail

WAIT_BOUND_S=${WAIT_BOUND_S:-60}

if systemctl is-active --quiet tracker@blue; then
  old=blue new=green
elif systemctl is-active --quiet tracker@green; then
  old=green new=blue
else
  echo "tracker-handoff: neither tracker@blue nor tracker@green is active; start one first" >&2
  exit 1
fi

echo "tracker-handoff: starting tracker@$new next to tracker@$old"
systemctl start --no-block "tracker@$new"

# Bound: the new instance reports in its status line that it listens and waits for the locks.
deadline=$((SECONDS + WAIT_BOUND_S))
until systemctl show -p StatusText --value "tracker@$new" | grep -q 'is locked'; do
  state=$(systemctl show -p ActiveState --value "tracker@$new")
  # Restart=on-failure shows a failed start as "activating" with SubState auto-restart.
  sub=$(systemctl show -p SubState --value "tracker@$new")
  if { [ "$state" != activating ] && [ "$state" != active ]; } || [ "$sub" = auto-restart ]; then
    echo "tracker-handoff: tracker@$new failed to start; tracker@$old keeps serving" >&2
    journalctl -u "tracker@$new" -n 20 --no-pager >&2 || true
    # No restart loop next to the serving instance.
    systemctl stop "tracker@$new" || true
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "tracker-handoff: tracker@$new did not bind within ${WAIT_BOUND_S}s; stopping it, tracker@$old keeps serving" >&2
    systemctl stop "tracker@$new"
    exit 1
  fi
  sleep 0.2
done

echo "tracker-handoff: tracker@$new is bound; stopping tracker@$old (it drains and exits)"
systemctl stop "tracker@$old"

deadline=$((SECONDS + WAIT_BOUND_S))
until systemctl is-active --quiet "tracker@$new"; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "tracker-handoff: tracker@$new is not active ${WAIT_BOUND_S}s after tracker@$old stopped" >&2
    exit 1
  fi
  sleep 0.2
done
systemctl disable --quiet "tracker@$old"
systemctl enable --quiet "tracker@$new"
echo "tracker-handoff: tracker@$new serves; tracker@$old stopped and disabled"
