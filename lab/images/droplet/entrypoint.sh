#!/usr/bin/env bash
# Droplet entrypoint: configure sshd + nginx for this container's ports, then run sshd.
#   SSH_PORT        sshd port on 127.0.0.1 (default 2222)
#   NGINX_PORT      nginx port on 127.0.0.1 (default 8080)
#   APP_PORT        port the app (pm2) listens on; nginx proxies / to it (default 3000)
#   AUTHORIZED_KEY  public key allowed to log in as `deploy`
set -euo pipefail
SSH_PORT="${SSH_PORT:-2222}"
NGINX_PORT="${NGINX_PORT:-8080}"
APP_PORT="${APP_PORT:-3000}"
CA_FILE=/etc/ssl/certs/ca-certificates.crt

# Ports and CA for login sessions (no PAM here, so no /etc/environment).
cat > /etc/default/droplet <<ENV
SSH_PORT=${SSH_PORT}
NGINX_PORT=${NGINX_PORT}
APP_PORT=${APP_PORT}
ENV

cat > /etc/ssh/sshd_config <<CONF
Port ${SSH_PORT}
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_rsa_key
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
AcceptEnv LANG LC_*
SetEnv NODE_EXTRA_CA_CERTS=${CA_FILE} SSH_PORT=${SSH_PORT} NGINX_PORT=${NGINX_PORT} APP_PORT=${APP_PORT}
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
ssh-keygen -A >/dev/null

if [ -n "${AUTHORIZED_KEY:-}" ]; then
    printf '%s\n' "${AUTHORIZED_KEY}" > /home/deploy/.ssh/authorized_keys
    chown deploy:deploy /home/deploy/.ssh/authorized_keys
    chmod 0600 /home/deploy/.ssh/authorized_keys
fi

cat > /etc/nginx/sites-enabled/default <<CONF
upstream app {
    server 127.0.0.1:${APP_PORT};
}
server {
    listen 127.0.0.1:${NGINX_PORT} default_server;
    server_name _;
    location = /nginx-health {
        access_log off;
        return 200 "ok\n";
    }
    location / {
        proxy_pass http://app;
        proxy_http_version 1.1;
        proxy_set_header Host \$host;
        proxy_set_header X-Real-IP \$remote_addr;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme;
    }
}
CONF
nginx -t -q
nginx

mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e
