/**
 * A service asked to stop while it is still starting (here: connecting to a NATS server that
 * never answers) exits at once, also as process 1 of its own PID namespace, as in a
 * container: there the kernel gives node no default action for SIGTERM, and before the
 * service's own handlers are set the signal would be ignored until start-up failed by itself.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { serviceMain, waitFor } from '@shoal/testkit';

describe('a signal during start-up', () => {
  let server: Server;
  let port = 0;
  const held: Socket[] = [];

  before(async () => {
    // Accepts and never speaks: a NATS client waits for the server's INFO until its timeout.
    server = createServer((socket) => held.push(socket));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    assert.ok(address !== null && typeof address === 'object');
    port = address.port;
  });

  after(() => {
    for (const socket of held) {
      socket.destroy();
    }
    server.close();
  });

  it('ends a service connecting to NATS at once, as process 1 of a PID namespace', async () => {
    const child = spawn(
      'unshare',
      ['--pid', '--fork', '--kill-child', process.execPath, serviceMain('watcher')],
      {
        env: {
          PATH: process.env.PATH ?? '',
          SHOAL_NATS_URL: `nats://127.0.0.1:${port}`,
          SHOAL_WATCHER_LISTEN: '127.0.0.1:0',
          SHOAL_WATCHER_REGISTRIES: 'registry.example.com',
          SHOAL_WATCHER_WEBHOOK_TOKEN: 'a-webhook-token-of-the-test-0123456789',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    try {
      await waitFor('the service connecting to NATS', () => Promise.resolve(held.length > 0), {
        timeoutMs: 10_000,
        intervalMs: 20,
      });
      // The service is process 1 inside; outside, it is unshare's only child.
      const pid = Number(
        (
          await readFile(`/proc/${String(child.pid)}/task/${String(child.pid)}/children`, 'utf8')
        ).trim(),
      );
      assert.ok(pid > 0, 'the service runs');
      const status = await readFile(`/proc/${pid}/status`, 'utf8');
      assert.match(status, /^NSpid:\s+\d+\s+1$/m, 'the service is process 1 of its namespace');
      const signalledAt = Date.now();
      process.kill(pid, 'SIGTERM');
      const [code] = await exited;
      const tookMs = Date.now() - signalledAt;
      assert.equal(code, 0, stderr);
      assert.match(stderr, /SIGTERM while starting: exiting/);
      // NATS's connect timeout is 5 s: an ignored signal would have waited for it, then exit 1.
      assert.ok(tookMs < 2_000, `exited ${tookMs} ms after the signal`);
    } finally {
      clearTimeout(killer);
      child.kill('SIGKILL');
    }
  });
});
