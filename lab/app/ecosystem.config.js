'use strict';
// pm2 ecosystem file of the opslab app:  pm2 start ecosystem.config.js
// Evaluated by the pm2 CLI, so process.env below is the environment pm2 was run with;
// `pm2 reload ecosystem.config.js --update-env` picks up a changed environment.

const PASS_THROUGH = [
  'PORT', 'HOST', 'DATABASE_URL', 'REDIS_URL', 'APP_VERSION', 'APP_NAME',
  'FAIL_HEALTH', 'STARTUP_DELAY_MS', 'CHECK_TIMEOUT_MS', 'DB_POOL_MAX', 'DB_MIGRATE',
];

const env = { NODE_ENV: process.env.NODE_ENV || 'production' };
for (const key of PASS_THROUGH) {
  if (process.env[key] !== undefined) env[key] = process.env[key];
}

const startupDelay = parseInt(process.env.STARTUP_DELAY_MS || '0', 10) || 0;

module.exports = {
  apps: [
    {
      name: process.env.PM2_APP_NAME || 'opslab-app',
      script: 'server.js',
      cwd: __dirname,
      exec_mode: 'cluster',
      instances: parseInt(process.env.PM2_INSTANCES || process.env.APP_INSTANCES || '2', 10) || 2,
      wait_ready: true, // server.js calls process.send('ready') once listening
      listen_timeout: parseInt(process.env.PM2_LISTEN_TIMEOUT || '0', 10) || startupDelay + 10000,
      kill_timeout: 6000, // server.js force-exits after 5 s of graceful shutdown
      shutdown_with_message: false,
      autorestart: true,
      max_restarts: 10,
      min_uptime: 2000,
      merge_logs: true,
      env,
    },
  ],
};
