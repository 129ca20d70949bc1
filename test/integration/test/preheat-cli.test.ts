/**
 * `shoal-preheat` against a real watcher, seed server and agents: `--wait`, `list` and
 * `status` name the image, count its bytes (seed, then nodes) with an ETA while running, and
 * list failures by node and blob; every error is one line on stderr with its documented exit
 * code (2 usage, 3 watcher unreachable, 4 refused, 5 --wait gave up), never a stack trace.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  freePort,
  generateImage,
  makeTempDir,
  PREHEAT_CLI,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  Teardown,
  WATCHER_TOKEN,
  type GeneratedImage,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { runTool, type ToolRun } from '../src/cli.js';
import { MiB } from '../src/files.js';
import { FAST_SWARM_ENV } from '../src/swarm.js';

/** The rate-limited agent's download limit: its 6 MiB layer takes about 5 s. */
const SLOW_RATE_BYTES = 1 * MiB;

/** Runs the CLI to its end with only `env` (and PATH), like an operator's shell. */
function preheat(args: readonly string[], env: Record<string, string>): Promise<ToolRun> {
  return runTool(PREHEAT_CLI, args, env);
}

/** The one line of stderr; fails when there is none or more (a stack trace). */
function oneLine(outcome: ToolRun): string {
  const lines = outcome.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one line on stderr, got: ${outcome.stderr}`);
  return lines[0] ?? '';
}

/** Bytes as an operator reads them in the CLI: MiB with one decimal. */
const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

describe('shoal-preheat', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let watcher: ServiceProcess;
  let env: Record<string, string>;
  let images: string;

  before(async () => {
    const nats = await startNats();
    teardown.add('nats', () => nats.stop());
    registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const registries = `${registry.host}=${registry.url}`;
    const tracker = await startTracker({ natsUrl: nats.url });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({ natsUrl: nats.url, registries, id: 'seed-cli' });
    teardown.add('seed', () => seed.stop());
    watcher = await startWatcher({ natsUrl: nats.url, registries });
    teardown.add('watcher', () => watcher.stop());
    // Two agents the selector matches: one pulls at a bounded rate (so the job is seen
    // running), the other mirrors another registry only, so it fails every blob.
    const slow = await startAgent({
      registries,
      defaultRegistry: registry.host,
      natsUrl: nats.url,
      peerId: 'slow-1',
      env: {
        ...FAST_SWARM_ENV,
        SHOAL_AGENT_LABELS: 'pool=cli',
        SHOAL_AGENT_PREHEAT_CONCURRENCY: '1',
        SHOAL_AGENT_DOWNLOAD_RATE_BYTES: String(SLOW_RATE_BYTES),
      },
    });
    teardown.add('slow-1', () => slow.stop());
    const stray = await startAgent({
      registries: 'elsewhere.example.com=http://127.0.0.1:9',
      natsUrl: nats.url,
      peerId: 'stray-1',
      env: { ...FAST_SWARM_ENV, SHOAL_AGENT_LABELS: 'pool=cli' },
    });
    teardown.add('stray-1', () => stray.stop());
    const dir = await makeTempDir('preheat-cli-images');
    images = dir.path;
    teardown.add('images', () => dir.remove());
    env = { SHOAL_WATCHER_URL: watcher.url, SHOAL_WATCHER_API_TOKEN: WATCHER_TOKEN };
  });

  after(() => teardown.run());

  const push = async (name: string, layers: number[]): Promise<[GeneratedImage, string]> => {
    const image = await generateImage(join(images, name), { layerSizes: layers, seed: name });
    return [image, await pushImage(image, registry.host, `team/${name}`)];
  };

  it('follows a nodes preheat by image, bytes and ETA, and lists failures by node and blob', async () => {
    const [image, ref] = await push('cli-nodes', [6 * MiB, 4 * MiB]);
    const bytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
    const waited = await preheat(
      [ref, '--scope', 'nodes', '--selector', 'pool=cli', '--wait', '--timeout', '120'],
      env,
    );
    assert.equal(waited.code, 1, `the stray agent fails the job: ${waited.stdout}${waited.stderr}`);
    assert.equal(waited.stderr, '');
    const lines = waited.stdout.trimEnd().split('\n');
    const id = /^(p-[0-9a-f]+) queued /.exec(lines[0] ?? '')?.[1];
    assert.ok(id !== undefined, waited.stdout);
    for (const line of lines.filter((l) => l.startsWith(id))) {
      assert.ok(
        line.startsWith(`${id} `) && line.includes(` ${ref}: `),
        `names the image: ${line}`,
      );
    }
    // While agents pull, the node phase shows its bytes and an estimate of the time left.
    assert.match(
      waited.stdout,
      new RegExp(
        `^${id} running ${ref}: seed ${mib(bytes)}/${mib(bytes)} \\(100%\\), blobs 3/3, ` +
          `nodes [01]/2 [0-9.]+ MiB/${mib(2 * bytes)} \\([0-9]+%\\), ETA [0-9]+ (s|min [0-9]+ s) \\(nodes\\)`,
        'm',
      ),
    );
    const final = `${id} failed ${ref}: seed ${mib(bytes)}/${mib(bytes)} (100%), blobs 3/3, nodes 2/2 ${mib(bytes)}/${mib(2 * bytes)} (50%), 3 failures`;
    assert.ok(lines.includes(final), `${final}\nin\n${waited.stdout}`);
    const reason = `registry ${registry.host} is not mirrored by this agent`;
    const failures = lines.filter((l) => l.startsWith('  stray-1 '));
    assert.deepEqual(
      failures.map((l) => l.trim().split(/\s{2,}/)),
      image.blobs.map((b) => ['stray-1', b.digest, reason]),
      'one line per blob that failed, with the node',
    );
    assert.equal(lines.filter((l) => l.startsWith('  slow-1')).length, 0);

    const listed = await preheat(['list'], env);
    assert.equal(listed.code, 0, listed.stderr);
    assert.ok(listed.stdout.split('\n').includes(final), listed.stdout);

    const status = await preheat(['status', id], env);
    assert.equal(status.code, 1, 'a failed job exits 1');
    assert.equal(status.stderr, '');
    const block = status.stdout.split('\n');
    for (const expected of [
      `job       ${id}`,
      `image     ${ref}`,
      `resolved  ${registry.host}/team/cli-nodes@${image.manifest.digest}`,
      'scope     nodes (pool=cli)',
      'state     failed',
      `seed      ${mib(bytes)}/${mib(bytes)} (100%), blobs 3/3`,
      `nodes     2/2 ${mib(bytes)}/${mib(2 * bytes)} (50%)`,
      'error     3 blob(s) could not be preheated',
      'failures  3',
    ]) {
      assert.ok(block.includes(expected), `"${expected}" in\n${status.stdout}`);
    }
    assert.deepEqual(
      block.filter((l) => l.startsWith('  stray-1 ')).map((l) => l.trim().split(/\s{2,}/)),
      image.blobs.map((b) => ['stray-1', b.digest, reason]),
    );

    const json = await preheat(['status', id, '--json'], env);
    const parsed = JSON.parse(json.stdout) as { bytesTotal: number; nodeBytesDone: number };
    assert.equal(parsed.bytesTotal, bytes);
    assert.equal(parsed.nodeBytesDone, bytes);
  });

  it('shows a seed preheat done with its bytes, exit 0', async () => {
    const [image, ref] = await push('cli-seed', [3 * MiB]);
    const bytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
    const waited = await preheat([ref, '--wait', '--timeout', '60'], env);
    assert.equal(waited.code, 0, waited.stdout + waited.stderr);
    assert.match(
      waited.stdout,
      new RegExp(
        `^p-[0-9a-f]+ done ${ref}: seed ${mib(bytes)}/${mib(bytes)} \\(100%\\), blobs 2/2$`,
        'm',
      ),
    );
  });

  it('says every error in one line with its exit code', async () => {
    const port = await freePort();
    const cases: [string, readonly string[], Record<string, string>, number, string | RegExp][] = [
      [
        'unknown flag',
        ['list', '--frobnicate'],
        env,
        2,
        'shoal-preheat: unknown option --frobnicate (shoal-preheat --help lists the options)',
      ],
      [
        'bad scope',
        ['reg/x:y', '--scope', 'everywhere'],
        env,
        2,
        'shoal-preheat: --scope must be seed or nodes, not "everywhere"',
      ],
      ['missing job id', ['status'], env, 2, 'shoal-preheat: status takes one job id'],
      [
        'bad selector',
        ['reg/x:y', '--selector', 'pool'],
        env,
        2,
        'shoal-preheat: --selector: "pool" is not key=value',
      ],
      [
        'not a URL',
        ['list'],
        { ...env, SHOAL_WATCHER_URL: 'watcher:65030' },
        2,
        'shoal-preheat: "watcher:65030" is not an http(s) URL (--url, SHOAL_WATCHER_URL)',
      ],
      [
        'watcher down',
        ['list', '--url', `http://127.0.0.1:${port}`],
        env,
        3,
        `shoal-preheat: cannot reach the watcher at http://127.0.0.1:${port}: ECONNREFUSED`,
      ],
      [
        'wrong token',
        ['list', '--token', 'not-the-token-at-all'],
        env,
        4,
        'shoal-preheat: the watcher refused GET /preheat (401): wrong or missing bearer token',
      ],
      [
        'unknown job',
        ['status', 'p-0000'],
        env,
        4,
        'shoal-preheat: the watcher refused GET /preheat/p-0000 (404): no job p-0000',
      ],
      [
        'image of a registry not configured',
        ['elsewhere.example.com/team/app:v1'],
        env,
        4,
        /^shoal-preheat: the watcher refused POST \/preheat \(4\d\d\): .*elsewhere\.example\.com/,
      ],
    ];
    for (const [what, args, caseEnv, code, line] of cases) {
      const outcome = await preheat(args, caseEnv);
      assert.equal(outcome.code, code, `${what}: ${outcome.stderr}`);
      assert.equal(outcome.stdout, '', what);
      if (typeof line === 'string') {
        assert.equal(oneLine(outcome), line, what);
      } else {
        assert.match(oneLine(outcome), line, what);
      }
    }

    // --wait gives up with exit 5 while the slow agent is still pulling.
    const [, ref] = await push('cli-timeout', [8 * MiB]);
    const gaveUp = await preheat(
      [ref, '--scope', 'nodes', '--selector', 'pool=cli', '--wait', '--timeout', '1'],
      env,
    );
    assert.equal(gaveUp.code, 5, gaveUp.stdout + gaveUp.stderr);
    assert.match(
      oneLine(gaveUp),
      /^shoal-preheat: job p-[0-9a-f]+ still (queued|running) after 1 s \(shoal-preheat status p-[0-9a-f]+ follows it\)$/,
    );
  });
});
