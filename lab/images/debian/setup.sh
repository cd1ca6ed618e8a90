#!/bin/sh
# Runs inside the debootstrapped rootfs (chroot) before `docker import`.
# The host's extra CA certificates were copied into /usr/local/share/ca-certificates.
set -eu
cat > /etc/apt/sources.list <<'LIST'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
LIST
# Container-style apt/dpkg: no recommends, no docs, packages never start services.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > /etc/apt/apt.conf.d/90lab-no-recommends
printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    > /etc/dpkg/dpkg.cfg.d/90lab-nodoc
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
update-ca-certificates
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /tmp/* /usr/share/doc/* /usr/share/man/*
