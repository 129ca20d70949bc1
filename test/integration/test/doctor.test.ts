/**
 * `shoal-doctor` on a node as an operator runs it, with the agent's environment: a healthy
 * node reports every check ok and exits 0; each broken piece (containerd without config_path,
 * a hosts.toml someone else wrote, the agent down, NATS unreachable) is one FAIL line with its
 * fix and exit 1; a bad flag is one line and exit 2.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  freePort,
  generateImage,
  makeTempDir,
  pushImage,
  serviceMain,
  startAgent,
  startFaultProxy,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  waitFor,
  writeHandoutPublicKeys,
  type AgentProcess,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { runTool, type ToolRun } from '../src/cli.js';
import { MiB } from '../src/files.js';

const DOCTOR = serviceMain('agent').replace(/main\.js$/, 'doctor.js');

interface Row {
  check: string;
  status: 'ok' | 'warn' | 'fail' | 'skip';
  detail: string;
  fix?: string;
}

function doctor(env: Record<string, string>, args: readonly string[]): Promise<ToolRun> {
  return runTool(DOCTOR, args, env);
}

function row(rows: readonly Row[], check: string): Row {
  const found = rows.find((r) => r.check === check);
  assert.ok(found !== undefined, `no ${check} among ${rows.map((r) => r.check).join(', ')}`);
  return found;
}

describe('shoal-doctor', () => {
  let registry: Registry;
  let nats: NatsServer;
  let agent: AgentProcess;
  let dir: { path: string; remove(): Promise<void> };
  let env: Record<string, string>;
  let containerdConfig: string;
  let imageRef: string;
  const services: ServiceProcess[] = [];

  before(async () => {
    registry = await startRegistry();
    dir = await makeTempDir('doctor');
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [1 * MiB],
      seed: 'doctor',
    });
    imageRef = await pushImage(image, registry.host, 'shoal/doctor');
    nats = await startNats();
    const registries = `${registry.host}=${registry.url}`;
    services.push(await startTracker({ natsUrl: nats.url }));
    services.push(await startSeedServer({ natsUrl: nats.url, registries }));
    const hostsDir = join(dir.path, 'certs.d');
    const port = await freePort();
    env = {
      SHOAL_AGENT_LISTEN: `127.0.0.1:${String(port)}`,
      SHOAL_AGENT_REGISTRIES: registries,
      SHOAL_AGENT_HOSTS_DIR: hostsDir,
      SHOAL_AGENT_CACHE_DIR: join(dir.path, 'cache'),
      SHOAL_AGENT_CACHE_MAX_BYTES: String(64 * MiB),
      SHOAL_NATS_URL: nats.url,
      SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: await writeHandoutPublicKeys(dir.path),
    };
    agent = await startAgent({
      registries,
      port,
      cacheDir: env.SHOAL_AGENT_CACHE_DIR ?? '',
      natsUrl: nats.url,
      env,
    });
    services.push(agent);
    containerdConfig = join(dir.path, 'config.toml');
    await writeFile(
      containerdConfig,
      `version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${hostsDir}"\n`,
    );
    await waitFor(
      'the agent to join the swarm',
      async () => (await agent.metric('shoal_agent_swarm_joined')) === 1,
    );
  });

  after(async () => {
    for (const service of services.reverse()) {
      await service.stop();
    }
    await nats.stop();
    await registry.stop();
    await dir.remove();
  });

  it('reports a healthy node: every check ok, exit 0', async () => {
    const result = await doctor(env, [
      '--containerd-config',
      containerdConfig,
      '--image',
      imageRef,
      '--json',
    ]);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const rows = JSON.parse(result.stdout) as Row[];
    for (const check of [
      'agent configuration',
      'containerd config_path',
      `hosts.toml ${registry.host}`,
      'mirror',
      'mirror /v2/',
      `resolve ${imageRef}`,
      `nats ${new URL(nats.url).host}`,
      'swarm',
      'cache disk',
    ]) {
      assert.equal(row(rows, check).status, 'ok', `${check}: ${JSON.stringify(row(rows, check))}`);
    }
    // The table a person reads says the same.
    const table = await doctor(env, ['--containerd-config', containerdConfig]);
    assert.equal(table.code, 0);
    assert.match(table.stdout, /^check\s+state\s+detail$/m);
    assert.match(table.stdout, /no failures/);
  });

  it('names each broken piece with its fix, exit 1', async () => {
    // containerd without config_path.
    const bare = join(dir.path, 'bare.toml');
    await writeFile(bare, 'version = 3\n');
    // A second registry whose hosts.toml someone else wrote.
    const other = 'other.registry.test:5000';
    await mkdir(join(env.SHOAL_AGENT_HOSTS_DIR ?? '', other), { recursive: true });
    await writeFile(
      join(env.SHOAL_AGENT_HOSTS_DIR ?? '', other, 'hosts.toml'),
      'server = "https://other.registry.test:5000"\n',
    );
    const broken = {
      ...env,
      SHOAL_AGENT_REGISTRIES: `${env.SHOAL_AGENT_REGISTRIES ?? ''},${other}`,
      // NATS nobody answers at, besides the real one.
      SHOAL_NATS_URL: `${nats.url},nats://127.0.0.1:${String(await freePort())}`,
    };
    const result = await doctor(broken, ['--containerd-config', bare, '--json']);
    assert.equal(result.code, 1);
    const rows = JSON.parse(result.stdout) as Row[];
    const containerd = row(rows, 'containerd config_path');
    assert.equal(containerd.status, 'fail');
    assert.match(containerd.fix ?? '', /io\.containerd\.cri\.v1\.images/, 'containerd 2.x section');
    const foreign = row(rows, `hosts.toml ${other}`);
    assert.equal(foreign.status, 'fail');
    assert.match(foreign.detail, /someone else/);
    assert.match(foreign.fix ?? '', /\[host\."http:\/\/127\.0\.0\.1:\d+"\]/);
    const unreachable = rows.filter((r) => r.check.startsWith('nats ') && r.status === 'fail');
    assert.equal(unreachable.length, 1);
    assert.match(unreachable[0]?.detail ?? '', /ECONNREFUSED/);
    assert.equal(row(rows, `hosts.toml ${registry.host}`).status, 'ok');
  });

  it('reports the agent down, and bad configuration, as failures', async () => {
    const down = await doctor(
      { ...env, SHOAL_AGENT_LISTEN: `127.0.0.1:${String(await freePort())}` },
      ['--containerd-config', containerdConfig, '--json'],
    );
    assert.equal(down.code, 1);
    const mirror = row(JSON.parse(down.stdout) as Row[], 'mirror');
    assert.equal(mirror.status, 'fail');
    assert.match(mirror.fix ?? '', /agent is not running/);

    const misconfigured = await doctor({ ...env, SHOAL_AGENT_CACHE_MAX_BYTES: 'lots' }, ['--json']);
    assert.equal(misconfigured.code, 1);
    const config = row(JSON.parse(misconfigured.stdout) as Row[], 'agent configuration');
    assert.equal(config.status, 'fail');
    assert.match(config.detail, /SHOAL_AGENT_CACHE_MAX_BYTES/);
  });

  it('says why the agent is not ready, as its /readyz says', async () => {
    // An agent caught shutting down is a moment a real one passes through too fast to catch:
    // a stand-in answers /readyz as the agent's ops routes do then.
    const standIn = createServer((req, res) => {
      const notReady = req.url === '/readyz';
      res.writeHead(notReady ? 503 : 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(notReady ? { status: 'not ready', reason: 'shutting down' } : {}));
    });
    await new Promise<void>((resolve) => standIn.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = standIn.address() as AddressInfo;
      const result = await doctor({ ...env, SHOAL_AGENT_LISTEN: `127.0.0.1:${String(port)}` }, [
        '--containerd-config',
        containerdConfig,
        '--json',
      ]);
      const mirror = row(JSON.parse(result.stdout) as Row[], 'mirror');
      assert.equal(mirror.status, 'warn', JSON.stringify(mirror));
      assert.match(mirror.detail, /is not ready \(shutting down\)/);
    } finally {
      await new Promise((resolve) => standIn.close(resolve));
    }
  });

  it('tells a registry that does not answer from an agent that is down', async () => {
    // The default registry blackholed (every request held past the agent's /v2/ timeout): the
    // agent is up and serves, only its relayed /v2/ check is slow.
    const proxy = await startFaultProxy({ upstream: registry.url });
    try {
      proxy.set({ kind: 'slow', delayMs: 120_000, rateBytes: 1024 * 1024 });
      const port = await freePort();
      const pingTimeoutMs = 4_000;
      const slowEnv = {
        ...env,
        SHOAL_AGENT_LISTEN: `127.0.0.1:${String(port)}`,
        SHOAL_AGENT_REGISTRIES: `${registry.host}=${proxy.url}`,
        // `/v2/` without ns= is relayed to the default registry.
        SHOAL_AGENT_DEFAULT_REGISTRY: registry.host,
        SHOAL_AGENT_HOSTS_DIR: join(dir.path, 'certs-slow.d'),
        SHOAL_AGENT_CACHE_DIR: join(dir.path, 'cache-slow'),
        // Above the 3 s a probe of the doctor's own may take.
        SHOAL_AGENT_AUTHZ_TIMEOUT_MS: String(pingTimeoutMs),
      };
      const slow = await startAgent({
        registries: slowEnv.SHOAL_AGENT_REGISTRIES,
        port,
        cacheDir: slowEnv.SHOAL_AGENT_CACHE_DIR,
        peerId: 'doctor-slow-registry',
        env: slowEnv,
      });
      try {
        const result = await doctor(slowEnv, ['--containerd-config', containerdConfig, '--json']);
        const rows = JSON.parse(result.stdout) as Row[];
        const mirror = row(rows, 'mirror');
        assert.equal(mirror.status, 'ok', JSON.stringify(mirror));
        const ping = row(rows, 'mirror /v2/');
        assert.equal(ping.status, 'warn', JSON.stringify(ping));
        assert.match(ping.detail, /answered 200 after \d+ ms/);
        assert.match(ping.fix ?? '', /default registry is slow or unreachable/);
        assert.ok(proxy.counts().slowed >= 1, 'the registry was asked');
      } finally {
        await slow.stop();
      }
    } finally {
      await proxy.stop();
    }
  });

  it('answers a bad flag with one line and exit 2', async () => {
    const result = await doctor(env, ['--frobnicate']);
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    assert.equal(
      result.stderr,
      'shoal-doctor: unknown option --frobnicate (shoal-doctor --help lists the options)\n',
      'one line, no stack trace',
    );
  });
});
