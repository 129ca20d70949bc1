/**
 * Services refuse to start with the deploy files' placeholder secrets, or without the keys
 * that keep pieces to cluster members, unless piece authentication is explicitly off: each
 * names the problem and exits 1 before it connects to anything.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { makeTempDir, serviceMain } from '@shoal/testkit';

type Service = Parameters<typeof serviceMain>[0];

/** Runs a service with `env` until it exits; its exit code and standard error. */
async function runToExit(
  service: Service,
  env: Record<string, string>,
): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [serviceMain(service)], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, stderr };
}

describe('start-up refusals', () => {
  let dir: { path: string; remove(): Promise<void> };
  let placeholderKey: string;

  before(async () => {
    dir = await makeTempDir('startup-secrets');
    placeholderKey = join(dir.path, 'handout.key');
    // What a file mounted from the shipped Secret holds.
    await writeFile(placeholderKey, 'change-me-handout-key');
  });

  after(async () => {
    await dir.remove();
  });

  // Nothing listens on port 9: a service that got past its configuration would not exit 1 at once.
  const nats = 'nats://127.0.0.1:9';
  const cases: { name: string; service: Service; env: Record<string, string>; says: RegExp }[] = [
    {
      name: 'the tracker with the placeholder NATS password',
      service: 'tracker',
      env: {
        SHOAL_NATS_URL: 'nats://tracker:change-me-tracker@127.0.0.1:9',
        SHOAL_TRACKER_PIECE_AUTH: 'off',
      },
      says: /SHOAL_NATS_URL: holds the deploy files' placeholder secret/,
    },
    {
      name: 'the tracker without a hand-out key',
      service: 'tracker',
      env: { SHOAL_NATS_URL: nats },
      says: /SHOAL_TRACKER_HANDOUT_KEY_FILE: required/,
    },
    {
      name: 'the seed server with the placeholder S3 key and no public keys',
      service: 'seedserver',
      env: {
        SHOAL_NATS_URL: nats,
        SHOAL_SEED_REGISTRIES: 'registry.example.com',
        SHOAL_S3_SECRET_ACCESS_KEY: 'change-me-seedserver-s3',
      },
      says: /SHOAL_S3_SECRET_ACCESS_KEY: holds the deploy files' placeholder secret[\s\S]*SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE: required|SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE: required[\s\S]*SHOAL_S3_SECRET_ACCESS_KEY: holds/,
    },
    {
      name: 'an agent in a swarm without public keys',
      service: 'agent',
      env: { SHOAL_NATS_URL: nats, SHOAL_AGENT_REGISTRIES: 'registry.example.com' },
      says: /SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: required/,
    },
  ];

  for (const { name, service, env, says } of cases) {
    it(`refuses ${name}`, async () => {
      const { code, stderr } = await runToExit(service, env);
      assert.equal(code, 1, stderr);
      assert.match(stderr, says);
    });
  }

  it('refuses a hand-out key file that still holds the placeholder', async () => {
    const { code, stderr } = await runToExit('tracker', {
      SHOAL_NATS_URL: nats,
      SHOAL_TRACKER_HANDOUT_KEY_FILE: placeholderKey,
    });
    assert.equal(code, 1, stderr);
    assert.match(stderr, /still the deploy files' placeholder/);
  });

  it('refuses a public keys file that still holds the placeholder', async () => {
    const { code, stderr } = await runToExit('agent', {
      SHOAL_NATS_URL: nats,
      SHOAL_AGENT_REGISTRIES: 'registry.example.com',
      SHOAL_AGENT_LISTEN: '127.0.0.1:0',
      SHOAL_AGENT_PEER_LISTEN: '127.0.0.1:0',
      SHOAL_AGENT_CACHE_DIR: join(dir.path, 'cache'),
      SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: placeholderKey,
    });
    assert.equal(code, 1, stderr);
    assert.match(stderr, /still the deploy files' placeholder/);
  });
});
