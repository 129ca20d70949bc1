import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, it } from 'node:test';

import { registriesList, type UpstreamRegistry } from '@shoal/registry';
import { createLogger, createMetrics, type Logger } from '@shoal/runtime';
import type { Counter, Gauge } from 'prom-client';

import { loadAgentConfig } from '../src/config.js';
import { hostsMirrorUrl } from '../src/hosts/config.js';
import { createHostsFiles, HostsFiles, isAgentHostsFile } from '../src/hosts/hosts-files.js';
import { createAgentMetrics, type AgentMetrics } from '../src/metrics.js';

const MIRROR = 'http://127.0.0.1:65001';
const NOW = new Date('2025-01-02T03:04:05.000Z');
const MARKER =
  '# Written by the Shoal agent node-1 at 2025-01-02T03:04:05.000Z; removed when it stops.';

/** Registries as the agent's configuration gives them. */
function registries(text: string): UpstreamRegistry[] {
  return registriesList.parse(text);
}

/** A logger whose JSON lines are kept, to check what was said and how often. */
function recordingLogger(): { logger: Logger; lines: () => { level: string; msg: string }[] } {
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString('utf8'));
      done();
    },
  });
  const logger = createLogger({ service: 'test', level: 'info', destination });
  return {
    logger,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => JSON.parse(line) as { level: string; msg: string }),
  };
}

async function value(
  metric: Counter | Gauge,
  labels: Record<string, string> = {},
): Promise<number> {
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
    .reduce((sum, v) => sum + v.value, 0);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

let root: string;
let dir: string;
let metrics: AgentMetrics;
let log: ReturnType<typeof recordingLogger>;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'shoal-hosts-'));
  dir = join(root, 'certs.d');
  await mkdir(dir);
  metrics = createAgentMetrics(createMetrics('agent'));
  log = recordingLogger();
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

function hostsFiles(registryList: string, hostsDir = dir, merge = false): HostsFiles {
  return new HostsFiles({
    dir: hostsDir,
    registries: registries(registryList),
    owner: 'node-1',
    metrics,
    logger: log.logger,
    now: () => NOW,
    merge,
  });
}

function hostsToml(server: string, mirror = MIRROR): string {
  return [
    MARKER,
    `server = "${server}"`,
    '',
    `[host."${mirror}"]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
}

describe('HostsFiles.write', () => {
  it('writes a file per registry into a fresh directory, atomically, marked as ours', async () => {
    const files = hostsFiles('docker.io,ghcr.io');
    await files.write(MIRROR);
    assert.deepEqual((await readdir(dir)).sort(), ['docker.io', 'ghcr.io']);
    assert.equal(
      await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8'),
      hostsToml('https://registry-1.docker.io'),
    );
    assert.equal(
      await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'),
      hostsToml('https://ghcr.io'),
    );
    // No temporary file is left next to the real one.
    assert.deepEqual(await readdir(join(dir, 'docker.io')), ['hosts.toml']);
    assert.equal(files.paths.length, 2);
    assert.equal(await value(metrics.hostsFiles), 2);
    assert.ok(isAgentHostsFile(await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8')));
  });

  it('writes the directory containerd reads, docker.io, for Docker Hub by any of its names', async () => {
    await hostsFiles('registry-1.docker.io').write(MIRROR);
    assert.deepEqual(await readdir(dir), ['docker.io']);
    assert.equal(
      await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8'),
      hostsToml('https://registry-1.docker.io'),
    );
  });

  it('maps docker.io to registry-1.docker.io and uses the URL given after =', async () => {
    await hostsFiles(
      'docker.io,quay.io=https://quay-mirror.example.com/base/,127.0.0.1:5000=http://127.0.0.1:5000',
    ).write(MIRROR);
    assert.match(
      await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8'),
      /^server = "https:\/\/registry-1\.docker\.io"$/m,
    );
    assert.equal(
      await readFile(join(dir, 'quay.io', 'hosts.toml'), 'utf8'),
      hostsToml('https://quay-mirror.example.com/base'),
    );
    assert.equal(
      await readFile(join(dir, '127.0.0.1:5000', 'hosts.toml'), 'utf8'),
      hostsToml('http://127.0.0.1:5000'),
    );
  });

  it('names the directory of a registry with a port by host:port', async () => {
    await hostsFiles('registry.example.com:5443').write('http://[::1]:65001');
    assert.deepEqual(await readdir(dir), ['registry.example.com:5443']);
    assert.equal(
      await readFile(join(dir, 'registry.example.com:5443', 'hosts.toml'), 'utf8'),
      hostsToml('https://registry.example.com:5443', 'http://[::1]:65001'),
    );
  });

  it('leaves a file it did not write byte for byte, warns once and counts it', async () => {
    const foreign = Buffer.from('# mine\r\nserver = "https://docker.io"\n\u00e9\u0000', 'utf8');
    await mkdir(join(dir, 'docker.io'));
    await writeFile(join(dir, 'docker.io', 'hosts.toml'), foreign);
    const files = hostsFiles('docker.io,ghcr.io');
    await files.write(MIRROR);

    assert.deepEqual(await readFile(join(dir, 'docker.io', 'hosts.toml')), foreign);
    assert.deepEqual(await readdir(join(dir, 'docker.io')), ['hosts.toml']);
    assert.ok(await exists(join(dir, 'ghcr.io', 'hosts.toml')), 'the other registry is written');
    assert.equal(await value(metrics.hostsFilesSkipped), 1);
    assert.equal(await value(metrics.hostsFiles), 1);
    const warnings = log.lines().filter((l) => l.level === 'warn');
    assert.equal(warnings.length, 1, JSON.stringify(warnings));

    await files.remove();
    assert.deepEqual(await readFile(join(dir, 'docker.io', 'hosts.toml')), foreign);
    assert.deepEqual(await readdir(dir), ['docker.io']);
  });

  it('rewrites a file an earlier agent left behind', async () => {
    await mkdir(join(dir, 'ghcr.io'));
    await writeFile(
      join(dir, 'ghcr.io', 'hosts.toml'),
      hostsToml('https://ghcr.io', 'http://10.0.0.9:1').replace('node-1', 'crashed-node'),
    );
    const files = hostsFiles('ghcr.io');
    await files.write(MIRROR);
    assert.equal(
      await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'),
      hostsToml('https://ghcr.io'),
    );
    assert.equal(await value(metrics.hostsFilesSkipped), 0);

    // The directory was there before this agent: the file goes, the directory stays.
    await files.remove();
    assert.deepEqual(await readdir(join(dir, 'ghcr.io')), []);
  });

  it('logs and counts a registry it cannot write, and carries on with the others', async () => {
    // A plain file where the registry's directory should be: mkdir fails, even for root.
    await writeFile(join(dir, 'docker.io'), 'not a directory');
    const files = hostsFiles('docker.io,ghcr.io');
    await files.write(MIRROR);
    assert.equal(await value(metrics.hostsFileErrors, { operation: 'write' }), 1);
    assert.equal(await value(metrics.hostsFiles), 1);
    assert.equal(await readFile(join(dir, 'docker.io'), 'utf8'), 'not a directory');
    assert.ok(log.lines().some((l) => l.level === 'error'));
    await files.remove();
    assert.deepEqual(await readdir(dir), ['docker.io']);
  });
});

describe('merge mode (SHOAL_AGENT_HOSTS_MERGE)', () => {
  // Someone else's file: top-level keys, a host of its own, a comment, CRLF and a non-UTF-8 byte.
  const foreign = Buffer.concat([
    Buffer.from(
      '# managed by our platform team\r\nserver = "https://registry-1.docker.io"\r\n' +
        'skip_verify = false\n\n[host."https://cache.internal:5000"]\n  capabilities = ["pull"]\n' +
        '  ca = "/etc/certs/cache.pem"\n# \xe9\n',
      'latin1',
    ),
    Buffer.from([0xff, 0x0a]),
  ]);
  const path = (): string => join(dir, 'docker.io', 'hosts.toml');

  it('puts the mirror first and keeps every other byte, then puts the file back', async () => {
    await mkdir(join(dir, 'docker.io'));
    await writeFile(path(), foreign);
    const files = hostsFiles('docker.io', dir, true);
    await files.write(MIRROR);

    const merged = await readFile(path());
    const text = merged.toString('latin1');
    assert.ok(isAgentHostsFile(text), "marked as the agent's");
    const mirrorAt = text.indexOf(`[host."${MIRROR}"]`);
    const theirsAt = text.indexOf('[host."https://cache.internal:5000"]');
    assert.ok(mirrorAt > 0 && mirrorAt < theirsAt, 'the mirror is the first host');
    assert.ok(text.indexOf('server = ') < mirrorAt, 'top-level keys stay ahead of every table');
    // Without the marker line and the mirror's table, the original byte for byte.
    const block = `[host."${MIRROR}"]\n  capabilities = ["pull", "resolve"]\n\n`;
    const stripped = text.slice(text.indexOf('\n') + 1).replace(block, '');
    assert.deepEqual(Buffer.from(stripped, 'latin1'), foreign);
    assert.deepEqual(await readFile(`${path()}.shoal-original`), foreign);
    assert.equal(await value(metrics.hostsFilesSkipped), 0);

    await files.remove();
    assert.deepEqual(await readFile(path()), foreign, 'put back byte for byte');
    assert.deepEqual(await readdir(join(dir, 'docker.io')), ['hosts.toml']);
  });

  it('after a crash, merges into the kept original again (never twice) and puts it back', async () => {
    await mkdir(join(dir, 'docker.io'));
    await writeFile(path(), foreign);
    await hostsFiles('docker.io', dir, true).write(MIRROR);
    // The agent dies here; the next one starts.
    const next = hostsFiles('docker.io', dir, true);
    await next.write(MIRROR);
    const text = (await readFile(path())).toString('latin1');
    assert.equal(text.split(`[host."${MIRROR}"]`).length, 2, 'the mirror once');
    assert.ok(isAgentHostsFile(text));
    await next.remove();
    assert.deepEqual(await readFile(path()), foreign);
    assert.ok(!(await exists(`${path()}.shoal-original`)));
  });

  it('leaves a file that names the mirror already, and writes its own where there is none', async () => {
    const already = `server = "https://ghcr.io"\n\n[host."${MIRROR}"]\n  capabilities = ["pull"]\n`;
    await mkdir(join(dir, 'ghcr.io'));
    await writeFile(join(dir, 'ghcr.io', 'hosts.toml'), already);
    const files = hostsFiles('ghcr.io,quay.io', dir, true);
    await files.write(MIRROR);
    assert.equal(await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'), already);
    assert.equal(
      await readFile(join(dir, 'quay.io', 'hosts.toml'), 'utf8'),
      hostsToml('https://quay.io'),
    );
    await files.remove();
    assert.equal(await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'), already);
    assert.ok(!(await exists(join(dir, 'quay.io'))));
  });

  it('is off by default: the foreign file is left alone', async () => {
    await mkdir(join(dir, 'docker.io'));
    await writeFile(path(), foreign);
    await hostsFiles('docker.io').write(MIRROR);
    assert.deepEqual(await readFile(path()), foreign);
    assert.equal(
      loadAgentConfig({ SHOAL_AGENT_REGISTRIES: 'docker.io' }).SHOAL_AGENT_HOSTS_MERGE,
      false,
    );
  });
});

describe('HostsFiles.remove', () => {
  it('removes only its own files, and the directories it created once empty', async () => {
    await mkdir(join(dir, 'quay.io'));
    const files = hostsFiles('docker.io,ghcr.io,quay.io');
    await files.write(MIRROR);
    // Someone else keeps a certificate next to our file: that directory must stay.
    await writeFile(join(dir, 'ghcr.io', 'ca.crt'), 'certificate');
    await files.remove();

    assert.deepEqual((await readdir(dir)).sort(), ['ghcr.io', 'quay.io']);
    assert.deepEqual(await readdir(join(dir, 'ghcr.io')), ['ca.crt']);
    assert.deepEqual(await readdir(join(dir, 'quay.io')), []);
    assert.deepEqual(files.paths, []);
    assert.equal(await value(metrics.hostsFiles), 0);
  });

  it('leaves a file that was replaced after it was written, by anyone', async () => {
    const files = hostsFiles('docker.io,ghcr.io');
    await files.write(MIRROR);
    const byNextAgent = hostsToml('https://registry-1.docker.io').replace('node-1', 'node-1-new');
    await writeFile(join(dir, 'docker.io', 'hosts.toml'), byNextAgent);
    await writeFile(join(dir, 'ghcr.io', 'hosts.toml'), 'server = "https://ghcr.io"\n');
    await files.remove();
    assert.equal(await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8'), byNextAgent);
    assert.equal(
      await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'),
      'server = "https://ghcr.io"\n',
    );
    assert.equal(await value(metrics.hostsFileErrors), 0);
  });

  it('creates a missing hosts directory and removes it again', async () => {
    const missing = join(root, 'etc', 'certs.d');
    const files = hostsFiles('docker.io', missing);
    await files.write(MIRROR);
    assert.ok(await exists(join(missing, 'docker.io', 'hosts.toml')));
    await files.remove();
    assert.deepEqual((await readdir(root)).sort(), ['certs.d']);
  });

  it('does nothing when a file it wrote is already gone', async () => {
    const files = hostsFiles('docker.io');
    await files.write(MIRROR);
    await rm(join(dir, 'docker.io'), { recursive: true });
    await files.remove();
    assert.deepEqual(await readdir(dir), []);
    assert.equal(await value(metrics.hostsFileErrors), 0);
  });
});

describe('hosts configuration', () => {
  it('is off by default', () => {
    const config = loadAgentConfig({ SHOAL_AGENT_REGISTRIES: 'docker.io' });
    assert.equal(config.SHOAL_AGENT_HOSTS_DIR, undefined);
    assert.equal(config.SHOAL_AGENT_HOSTS_MIRROR_URL, undefined);
    assert.equal(
      createHostsFiles(config, { registries: [], metrics, logger: log.logger }),
      undefined,
    );
  });

  it('reads the directory and the mirror URL', () => {
    const config = loadAgentConfig({
      SHOAL_AGENT_REGISTRIES: 'docker.io',
      SHOAL_AGENT_HOSTS_DIR: '/etc/containerd/certs.d',
      SHOAL_AGENT_HOSTS_MIRROR_URL: 'http://10.1.2.3:65001/',
    });
    assert.equal(config.SHOAL_AGENT_HOSTS_DIR, '/etc/containerd/certs.d');
    assert.equal(
      hostsMirrorUrl(config.SHOAL_AGENT_HOSTS_MIRROR_URL, config.SHOAL_AGENT_LISTEN, 65001),
      'http://10.1.2.3:65001',
    );
    assert.ok(createHostsFiles(config, { registries: [], metrics, logger: log.logger }));
  });

  it('refuses a mirror URL that is not http(s)://host:port, and an empty directory', () => {
    for (const [name, text] of [
      ['SHOAL_AGENT_HOSTS_MIRROR_URL', 'ftp://127.0.0.1:65001'],
      ['SHOAL_AGENT_HOSTS_MIRROR_URL', 'http://127.0.0.1:65001/v2'],
      ['SHOAL_AGENT_HOSTS_MIRROR_URL', 'http://127.0.0.1:65001/?x=1'],
      ['SHOAL_AGENT_HOSTS_MIRROR_URL', '127.0.0.1:65001'],
      ['SHOAL_AGENT_HOSTS_DIR', ''],
    ] as const) {
      assert.throws(
        () => loadAgentConfig({ SHOAL_AGENT_REGISTRIES: 'docker.io', [name]: text }),
        (error: unknown) => error instanceof Error && error.message.includes(`${name}: `),
        `${name}=${text}`,
      );
    }
  });

  it('derives the mirror URL from the listen address and the bound port', () => {
    assert.equal(
      hostsMirrorUrl(undefined, { host: '127.0.0.1', port: 0 }, 41234),
      'http://127.0.0.1:41234',
    );
    assert.equal(
      hostsMirrorUrl(undefined, { host: '0.0.0.0', port: 65001 }, 65001),
      'http://127.0.0.1:65001',
    );
    assert.equal(
      hostsMirrorUrl(undefined, { host: '::', port: 65001 }, 65001),
      'http://127.0.0.1:65001',
    );
    assert.equal(
      hostsMirrorUrl(undefined, { host: '::1', port: 65001 }, 65001),
      'http://[::1]:65001',
    );
    assert.equal(
      hostsMirrorUrl(undefined, { host: '10.0.0.5', port: 65001 }, 65001),
      'http://10.0.0.5:65001',
    );
  });
});
