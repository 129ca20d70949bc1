/**
 * The watcher and preheat (issue 4): a push to the registry notifies the watcher, and the seed
 * server ends up holding the image without any agent asking; scope `nodes` fills the agents'
 * caches; bad webhooks publish nothing; a scheduled list follows a re-tag with exactly one
 * watcher acting; and a preheat survives its watcher and seed server being killed.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import {
  freePort,
  generateImage,
  makeTempDir,
  PREHEAT_CLI,
  pushImage,
  run,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  Teardown,
  waitFor,
  WATCHER_TOKEN,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { bytesBySource, FAST_SWARM_ENV, pullBlobs } from '../src/swarm.js';

const HMAC_SECRET = 'shoal-test-hmac-secret-0123456789';
const MAX_BODY = 64 * 1024;

interface Job {
  readonly id: string;
  readonly image: string;
  readonly resolved: string;
  readonly scope: string;
  readonly state: string;
  readonly blobsTotal: number;
  readonly blobsDone: number;
  readonly nodesTotal?: number;
  readonly nodesDone?: number;
  readonly failures: unknown[];
  readonly error?: string;
}

describe('preheat', () => {
  const teardown = new Teardown();
  let nats: NatsServer;
  let registry: Registry;
  /** A second registry, without notifications, for the scheduled list. */
  let quiet: Registry;
  let seed: ServiceProcess;
  let watcher: ServiceProcess;
  let watcherPort: number;
  let layouts: string;
  let registries: string;

  const watcherEnv = (): Record<string, string> => ({
    SHOAL_WATCHER_WEBHOOK_HMAC_SECRET: HMAC_SECRET,
    SHOAL_WATCHER_WEBHOOK_MAX_BYTES: String(MAX_BODY),
    SHOAL_WATCHER_PREHEAT_ACK_WAIT_MS: '4000',
  });
  const seedEnv = (): Record<string, string> => ({});

  before(async () => {
    nats = await startNats();
    teardown.add('nats', () => nats.stop());
    watcherPort = await freePort();
    registry = await startRegistry({
      notify: {
        url: `http://127.0.0.1:${watcherPort}/webhooks/distribution`,
        headers: { Authorization: `Bearer ${WATCHER_TOKEN}` },
      },
    });
    teardown.add('registry', () => registry.stop());
    quiet = await startRegistry();
    teardown.add('quiet registry', () => quiet.stop());
    registries = `${registry.host}=${registry.url},${quiet.host}=${quiet.url}`;
    const tracker = await startTracker({ natsUrl: nats.url });
    teardown.add('tracker', () => tracker.stop());
    seed = await startSeedServer({
      natsUrl: nats.url,
      registries,
      id: 'seed-preheat',
      env: seedEnv(),
    });
    teardown.add('seed', () => seed.stop());
    watcher = await startWatcher({
      natsUrl: nats.url,
      registries,
      port: watcherPort,
      env: watcherEnv(),
    });
    teardown.add('watcher', () => watcher.stop());
    const dir = await makeTempDir('preheat-images');
    layouts = dir.path;
    teardown.add('images', () => dir.remove());
  });

  after(() => teardown.run());

  const image = async (name: string, layerSizes: number[]): Promise<GeneratedImage> =>
    generateImage(join(layouts, name), { layerSizes, seed: name });

  const agent = async (peerId: string, labels = ''): Promise<AgentProcess> => {
    const started = await startAgent({
      registries,
      defaultRegistry: registry.host,
      natsUrl: nats.url,
      peerId,
      env: { ...FAST_SWARM_ENV, SHOAL_AGENT_LABELS: labels },
    });
    teardown.add(peerId, () => started.stop());
    return started;
  };

  it('preheats the seed server from a push webhook, so a fresh agent reads no blob from the origin', async () => {
    const pushed = await image('webhook', [8 * MiB, 1 * MiB]);
    const storedBefore = await seed.metric('shoal_seedserver_stored_bytes_total');
    await pushImage(pushed, registry.host, 'team/webhook');
    const job = await jobFor(
      watcher,
      (j) => j.image === `${registry.host}/team/webhook:${pushed.tag}`,
    );
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.scope, 'seed');
    assert.equal(job.blobsTotal, pushed.blobs.length);
    assert.equal(job.blobsDone, pushed.blobs.length);
    assert.equal(job.resolved, `${registry.host}/team/webhook@${pushed.manifest.digest}`);
    const imageBytes = pushed.blobs.reduce((sum, blob) => sum + blob.size, 0);
    assert.equal(
      (await seed.metric('shoal_seedserver_stored_bytes_total')) - storedBefore,
      imageBytes,
      'every blob went into the object gateway',
    );

    const getsBefore = (await registry.blobGets()).length;
    const fresh = await agent('fresh-node');
    const outcomes = await pullBlobs(fresh, { image: pushed, registry }, 'team/webhook');
    for (const [i, outcome] of outcomes.entries()) {
      assert.equal(outcome.digest, pushed.blobs[i]?.digest);
    }
    assert.equal((await registry.blobGets()).length, getsBefore, 'no blob read from the origin');
    const sources = await bytesBySource(fresh);
    assert.equal(sources.origin, 0);
    assert.equal(sources.seed + sources.peer, imageBytes);
  });

  it('fills the caches of the agents a selector matches (scope nodes, from the CLI)', async () => {
    const gpu = [await agent('gpu-1', 'pool=gpu'), await agent('gpu-2', 'pool=gpu')];
    const cpu = await agent('cpu-1', 'pool=cpu');
    const pushed = await image('nodes', [6 * MiB, 2 * MiB]);
    const ref = await pushImage(pushed, registry.host, 'team/nodes');
    const env = {
      ...process.env,
      SHOAL_WATCHER_URL: watcher.url,
      SHOAL_WATCHER_API_TOKEN: WATCHER_TOKEN,
    };
    const { stdout } = await run(
      process.execPath,
      [
        PREHEAT_CLI,
        ref,
        '--scope',
        'nodes',
        '--selector',
        'pool=gpu',
        '--wait',
        '--timeout',
        '120',
      ],
      { env, timeoutMs: 150_000 },
    );
    assert.match(
      stdout,
      / done \S+\/team\/nodes:\S+: seed [0-9.]+ MiB\/[0-9.]+ MiB \(100%\), blobs 3\/3, nodes 2\/2 /,
    );
    const id = /^(p-[0-9a-f]+) /m.exec(stdout)?.[1];
    assert.ok(id !== undefined, stdout);
    const status = await run(process.execPath, [PREHEAT_CLI, 'status', id], { env });
    assert.match(status.stdout, new RegExp(`^job +${id}\nimage +${ref}\n`));
    assert.match(status.stdout, /^state +done$/m);
    assert.match(status.stdout, /^nodes +2\/2 [0-9.]+ MiB\/[0-9.]+ MiB \(100%\)$/m);

    for (const node of gpu) {
      const before = await bytesBySource(node);
      const hitsBefore = await node.metric('shoal_agent_cache_requests_total', { result: 'hit' });
      const outcomes = await pullBlobs(node, { image: pushed, registry }, 'team/nodes');
      assert.deepEqual(
        outcomes.map((o) => o.digest),
        pushed.blobs.map((b) => b.digest),
      );
      assert.deepEqual(await bytesBySource(node), before, 'nothing fetched at pull time');
      assert.equal(
        (await node.metric('shoal_agent_cache_requests_total', { result: 'hit' })) - hitsBefore,
        pushed.blobs.length,
      );
    }
    assert.equal(
      await cpu.metric('shoal_agent_preheat_blobs_total'),
      0,
      'the selector left cpu-1 out',
    );
  });

  it('refuses forged, malformed, oversized and foreign webhooks, publishing nothing', async () => {
    const pushed = await image('harbor', [1 * MiB]);
    await pushImage(pushed, quiet.host, 'team/harbor');
    const digest = pushed.manifest.digest;
    const distribution = JSON.stringify({
      events: [
        {
          id: 'evt-1',
          timestamp: new Date().toISOString(),
          action: 'push',
          target: {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            digest,
            repository: 'team/harbor',
            url: `${quiet.url}/v2/team/harbor/manifests/${digest}`,
            tag: pushed.tag,
          },
          request: { id: 'req-1', host: quiet.host, method: 'PUT' },
        },
      ],
    });
    const harbor = (type: string): string =>
      JSON.stringify({
        type,
        occur_at: 1767225600,
        operator: 'admin',
        event_data: {
          resources: [
            { digest, tag: pushed.tag, resource_url: `${quiet.host}/team/harbor:${pushed.tag}` },
          ],
          repository: {
            date_created: 1767225600,
            name: 'harbor',
            namespace: 'team',
            repo_full_name: 'team/harbor',
            repo_type: 'private',
          },
        },
      });
    const bearer = { authorization: `Bearer ${WATCHER_TOKEN}` };
    const sign = (body: string): Record<string, string> => ({
      'x-shoal-signature-256': `sha256=${createHmac('sha256', HMAC_SECRET).update(body).digest('hex')}`,
    });
    const queuedBefore = await commandsQueued(nats);
    const cases: [string, string, string, Record<string, string>, number, RegExp][] = [
      ['no credentials', 'distribution', distribution, {}, 401, /missing Authorization/],
      [
        'wrong token',
        'distribution',
        distribution,
        { authorization: 'Bearer not-the-token-at-all' },
        401,
        /wrong token/,
      ],
      [
        'bad signature',
        'harbor',
        harbor('PUSH_ARTIFACT'),
        sign('{"something":"else"}'),
        401,
        /signature/,
      ],
      ['malformed JSON', 'distribution', '{"events": [', bearer, 400, /not JSON/],
      [
        'not an envelope',
        'distribution',
        '{"events": "push"}',
        bearer,
        400,
        /not a distribution delivery/,
      ],
      [
        'oversized',
        'distribution',
        `{"events":[],"pad":"${'x'.repeat(MAX_BODY)}"}`,
        bearer,
        413,
        /larger than 65536 bytes/,
      ],
      [
        'unknown Harbor event',
        'harbor',
        harbor('PUSH_SOMETHING'),
        bearer,
        400,
        /unknown Harbor event type/,
      ],
      ['unknown format', 'gitlab', distribution, bearer, 404, /no webhook format/],
      [
        'pull events only',
        'distribution',
        distribution.replace('"push"', '"pull"'),
        bearer,
        200,
        /action pull/,
      ],
      [
        'a registry not configured',
        'distribution',
        distribution.replaceAll(quiet.host, 'elsewhere.example.com'),
        bearer,
        200,
        /elsewhere\.example\.com is not in SHOAL_WATCHER_REGISTRIES/,
      ],
      [
        'Harbor pull',
        'harbor',
        harbor('PULL_ARTIFACT'),
        sign(harbor('PULL_ARTIFACT')),
        200,
        /PULL_ARTIFACT/,
      ],
    ];
    for (const [what, format, body, headers, status, reason] of cases) {
      const response = await fetch(`${watcher.url}/webhooks/${format}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body,
        signal: AbortSignal.timeout(10_000),
      });
      const text = await response.text();
      assert.equal(response.status, status, `${what}: ${text}`);
      assert.match(text, reason, what);
    }
    assert.equal(await commandsQueued(nats), queuedBefore, 'no refused delivery queued anything');
    assert.ok((await watcher.metric('shoal_watcher_webhooks_rejected_total')) >= 8);

    // A signed Harbor push is accepted; delivered again, it is the same job and nothing more.
    const push = harbor('PUSH_ARTIFACT');
    const first = await postJson(`${watcher.url}/webhooks/harbor`, push, sign(push));
    assert.equal(first.status, 202);
    const again = await postJson(`${watcher.url}/webhooks/harbor`, push, sign(push));
    assert.equal(again.status, 202);
    const [a, b] = [first.body.accepted[0], again.body.accepted[0]];
    assert.ok(a !== undefined && b !== undefined);
    assert.equal(b.id, a.id);
    assert.equal(b.duplicate, true);
    assert.equal(await commandsQueued(nats), queuedBefore + 1);
    const job = await jobFor(watcher, (j) => j.id === a.id);
    assert.equal(job.state, 'done', JSON.stringify(job));
  });

  it('preheats a re-tagged image on the next interval, with one of two watchers acting', async () => {
    const scheduleDir = await makeTempDir('schedule');
    teardown.add('schedule', () => scheduleDir.remove());
    const file = join(scheduleDir.path, 'schedule.json');
    const ref = `${quiet.host}/team/sched:v1`;
    await writeFile(file, JSON.stringify({ images: [{ image: ref }] }));
    const first = await image('sched-1', [2 * MiB]);
    await pushImage(first, quiet.host, 'team/sched', { tag: 'v1' });
    const scheduled = [];
    for (const n of [1, 2]) {
      const replica = await startWatcher({
        natsUrl: nats.url,
        registries,
        id: `scheduler-${n}`,
        env: {
          ...watcherEnv(),
          SHOAL_WATCHER_SCHEDULE_FILE: file,
          SHOAL_WATCHER_SCHEDULE_INTERVAL_MS: '1500',
        },
      });
      teardown.add(`scheduler-${n}`, () => replica.stop());
      scheduled.push(replica);
    }
    const resolvedFirst = `${quiet.host}/team/sched@${first.manifest.digest}`;
    assert.equal((await jobFor(watcher, (j) => j.resolved === resolvedFirst)).state, 'done');

    const second = await image('sched-2', [3 * MiB]);
    await pushImage(second, quiet.host, 'team/sched', { tag: 'v1' });
    const resolvedSecond = `${quiet.host}/team/sched@${second.manifest.digest}`;
    const job = await jobFor(watcher, (j) => j.resolved === resolvedSecond);
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.blobsDone, second.blobs.length);

    // The list changes without a restart.
    const other = await image('sched-3', [1 * MiB]);
    await pushImage(other, quiet.host, 'team/other', { tag: 'v1' });
    await writeFile(
      file,
      JSON.stringify({ images: [{ image: ref }, { image: `${quiet.host}/team/other:v1` }] }),
    );
    const added = await jobFor(
      watcher,
      (j) => j.resolved === `${quiet.host}/team/other@${other.manifest.digest}`,
    );
    assert.equal(added.state, 'done');

    const leaders = await Promise.all(
      scheduled.map((w) => w.metric('shoal_watcher_schedule_leader')),
    );
    assert.deepEqual([...leaders].sort(), [0, 1], 'exactly one replica holds the schedule lock');
    const checks = await Promise.all(
      scheduled.map((w) => w.metric('shoal_watcher_schedule_checks_total')),
    );
    assert.equal(
      checks.filter((c) => c > 0).length,
      1,
      `only the leader checks: ${checks.join(', ')}`,
    );
    const queued = await Promise.all(
      scheduled.map((w) =>
        w.metric('shoal_watcher_preheat_commands_total', { origin: 'schedule' }),
      ),
    );
    assert.equal(
      queued.reduce((sum, n) => sum + n, 0),
      3,
      'one job per digest: two tags of sched:v1 and other:v1',
    );
  });

  it('fails a preheat the origin cannot serve, and runs it again once asked after a fix', async () => {
    const pushed = await image('retry', [1 * MiB]);
    const ref = await pushImage(pushed, quiet.host, 'team/retry');
    const layer = pushed.layers[0];
    assert.ok(layer !== undefined);
    await quiet.corruptBlob(layer.digest);
    const ask = async (): Promise<{ id: string; duplicate: boolean }> => {
      const response = await fetch(`${watcher.url}/preheat`, {
        method: 'POST',
        headers: { authorization: `Bearer ${WATCHER_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ image: ref }),
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(response.status, 202);
      return (await response.json()) as { id: string; duplicate: boolean };
    };
    const first = await ask();
    const failed = await jobFor(watcher, (j) => j.id === first.id);
    assert.equal(failed.state, 'failed', JSON.stringify(failed));
    assert.match(JSON.stringify(failed.failures), /digest/);

    // The registry serves the right bytes again (flipping the same bytes back); asked again,
    // the same job runs afresh and does not trip over the first run's failure report.
    await quiet.corruptBlob(layer.digest);
    const second = await ask();
    assert.equal(second.id, first.id);
    assert.equal(second.duplicate, false);
    const done = await jobFor(watcher, (j) => j.id === first.id && j.state !== 'failed');
    assert.equal(done.state, 'done', JSON.stringify(done));
    assert.equal(done.blobsDone, pushed.blobs.length);
    assert.deepEqual(done.failures, []);
  });

  it('completes a preheat after its watcher and the seed server are killed mid-way', async () => {
    const pushed = await image('killed', [192 * MiB]);
    const ingestedBefore = await seed.metric('shoal_seedserver_ingested_bytes_total');
    await pushImage(pushed, registry.host, 'team/killed');
    await waitFor(
      'the seed server to be part-way through the layer',
      async () =>
        (await seed.metric('shoal_seedserver_ingested_bytes_total')) - ingestedBefore > 16 * MiB,
      { intervalMs: 20, timeoutMs: 60_000 },
    );
    await Promise.all([seed.process.kill(), watcher.process.kill()]);
    const killedAt = (await registry.blobGets()).length;

    // The same seed (its disk and object gateway), and a new watcher process.
    seed = await startSeedServer({
      natsUrl: nats.url,
      registries,
      id: 'seed-preheat',
      env: {
        ...seedEnv(),
        SHOAL_SEED_CACHE_DIR: join(seed.dir, 'cache'),
        SHOAL_STORE_DIR: join(seed.dir, 'store'),
      },
    });
    teardown.add('seed (restarted)', () => seed.stop());
    watcher = await startWatcher({ natsUrl: nats.url, registries, env: watcherEnv() });
    teardown.add('watcher (restarted)', () => watcher.stop());
    const job = await jobFor(
      watcher,
      (j) => j.image === `${registry.host}/team/killed:${pushed.tag}`,
      120_000,
    );
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.blobsDone, pushed.blobs.length);
    assert.ok((await registry.blobGets()).length > killedAt, 'the restarted seed read the origin');

    const getsBefore = (await registry.blobGets()).length;
    const fresh = await agent('after-kill');
    const outcomes = await pullBlobs(fresh, { image: pushed, registry }, 'team/killed');
    assert.deepEqual(
      outcomes.map((o) => o.digest),
      pushed.blobs.map((b) => b.digest),
    );
    assert.equal((await registry.blobGets()).length, getsBefore, 'the blob is warm in the cluster');
  });
});

/** Waits for a job matching `match` to finish (done or failed) and returns it. */
async function jobFor(
  watcher: ServiceProcess,
  match: (job: Job) => boolean,
  timeoutMs = 60_000,
): Promise<Job> {
  let found: Job | undefined;
  await waitFor(
    'a preheat job to finish',
    async () => {
      const response = await fetch(`${watcher.url}/preheat?limit=500`, {
        headers: { authorization: `Bearer ${WATCHER_TOKEN}` },
        signal: AbortSignal.timeout(5_000),
      });
      const { jobs } = (await response.json()) as { jobs: Job[] };
      found = jobs.find(match);
      return found !== undefined && (found.state === 'done' || found.state === 'failed');
    },
    { timeoutMs, intervalMs: 250 },
  );
  assert.ok(found !== undefined);
  return found;
}

/** Commands ever published on the preheat work queue (its last sequence number). */
async function commandsQueued(nats: NatsServer): Promise<number> {
  const nc = await connect({ servers: nats.url, timeout: 5_000 });
  try {
    const jsm = await jetstreamManager(nc);
    return (await jsm.streams.info('SHOAL_PREHEAT')).state.last_seq;
  } finally {
    await nc.close();
  }
}

async function postJson(
  url: string,
  body: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: { accepted: { id: string; duplicate: boolean }[] } }> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
    signal: AbortSignal.timeout(10_000),
  });
  return {
    status: response.status,
    body: (await response.json()) as { accepted: { id: string; duplicate: boolean }[] },
  };
}
