/**
 * The NATS users of deploy/k8s are enough for Shoal to work and keep the roles apart: a real
 * nats-server runs the rendered authorization block, the real tracker, seed server and agents
 * log in as their own users and pull an image through the swarm, the watcher preheats an image
 * onto the agents, and an agent cannot publish piece hashes, nor create a stream that would
 * republish its own KV puts as piece hashes.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { KV_BUCKETS } from '@shoal/proto';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  waitFor,
  type AgentProcess,
  type GeneratedImage,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { find, renderOverlay } from '../src/deploy.js';
import { MiB } from '../src/files.js';
import { serverErrors } from '../src/nats-errors.js';
import { preheatAndWait } from '../src/preheat.js';
import { FAST_SWARM_ENV, bytesBySource, pullBlobs } from '../src/swarm.js';

const PASSWORDS = {
  agent: 'agent-test-pw',
  tracker: 'tracker-test-pw',
  seedserver: 'seedserver-test-pw',
  watcher: 'watcher-test-pw',
} as const;

const repository = 'deploy/nats-users';

/** Presence every 300 ms, so agents waiting for the bucket join within seconds. */
const PRESENCE_ENV = { SHOAL_AGENT_PRESENCE_INTERVAL_MS: '300' } as const;

describe('NATS users of deploy/k8s', () => {
  const cleanup: (() => Promise<void>)[] = [];
  let hostPort = '';
  let registry: Registry;
  let image: GeneratedImage;
  let preheated: GeneratedImage;

  const urlFor = (user: keyof typeof PASSWORDS): string =>
    `nats://${user}:${PASSWORDS[user]}@${hostPort}`;

  before(async () => {
    // The authorization block exactly as the overlay renders it, in a one-server config.
    const objects = await renderOverlay('mixed');
    const configMap = objects.find(
      (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-nats-config'),
    );
    assert.ok(configMap !== undefined);
    find(objects, 'StatefulSet', 'shoal-nats');
    const auth = (configMap.data as Record<string, string>)['auth.conf'] ?? '';
    const nats = await startNats({
      config: 'include ./auth.conf',
      files: { 'auth.conf': auth },
      env: {
        NATS_AGENT_PASSWORD: PASSWORDS.agent,
        NATS_TRACKER_PASSWORD: PASSWORDS.tracker,
        NATS_SEEDSERVER_PASSWORD: PASSWORDS.seedserver,
        NATS_WATCHER_PASSWORD: PASSWORDS.watcher,
      },
    });
    cleanup.push(() => nats.stop());
    hostPort = new URL(nats.url).host;

    registry = await startRegistry();
    cleanup.push(() => registry.stop());
    const layout = await makeTempDir('image');
    cleanup.push(() => layout.remove());
    image = await generateImage(layout.path, { layerSizes: [3 * MiB, 1 * MiB], seed: 'users' });
    await pushImage(image, registry.host, repository);
    preheated = await generateImage(join(layout.path, 'preheated'), {
      layerSizes: [2 * MiB],
      seed: 'users-preheat',
    });
    await pushImage(preheated, registry.host, `${repository}-preheat`);
  });

  after(async () => {
    for (const step of cleanup.reverse()) {
      await step().catch(() => undefined);
    }
  });

  /** A connection as `user` whose server errors (permissions violations) are collected. */
  const connectAs = async (
    user: keyof typeof PASSWORDS,
  ): Promise<{ nc: NatsConnection; errors: string[] }> => {
    const nc = await connect({ servers: [`nats://${hostPort}`], user, pass: PASSWORDS[user] });
    return { nc, errors: serverErrors(nc) };
  };

  // First, while no service has declared anything: the presence bucket does not exist yet.
  it("refuses an agent's stream create, with a republish rule, before the bucket exists", async () => {
    const agent = await connectAs('agent');
    const watcher = await connectAs('watcher');
    const stream = `KV_${KV_BUCKETS.agents.bucket}`;
    try {
      // The reviewer's attack: the presence stream, made by an agent with a republish rule
      // that turns its own puts into piece hashes of a blob.
      const jsm = await jetstreamManager(agent.nc, { timeout: 2000 });
      const forged = {
        name: stream,
        subjects: [`$KV.${KV_BUCKETS.agents.bucket}.>`],
        republish: {
          // A single key: nats-server refuses a republish of `>` onto one literal subject.
          src: `$KV.${KV_BUCKETS.agents.bucket}.users-x`,
          dest: `shoal.pieces.v1.hashes.sha256.${'b'.repeat(64)}`,
        },
      };
      await assert.rejects(jsm.streams.add(forged));
      await waitFor(
        'a permissions violation for the stream create',
        () =>
          Promise.resolve(
            agent.errors.some(
              (e) => /permissions violation/i.test(e) && e.includes(`STREAM.CREATE.${stream}`),
            ),
          ),
        { timeoutMs: 5000 },
      );
      // Nor an update, nor any other stream (one of its own naming, on a hash subject).
      agent.nc.publish(
        `$JS.API.STREAM.UPDATE.${stream}`,
        JSON.stringify({ ...forged, subjects: ['shoal.pieces.v1.>'] }),
      );
      agent.nc.publish(
        '$JS.API.STREAM.CREATE.FORGED',
        JSON.stringify({ name: 'FORGED', subjects: ['shoal.pieces.v1.forged.>'] }),
      );
      await agent.nc.flush();
      await waitFor(
        'violations for the update and the other create',
        () =>
          Promise.resolve(
            agent.errors.some((e) => e.includes(`STREAM.UPDATE.${stream}`)) &&
              agent.errors.some((e) => e.includes('STREAM.CREATE.FORGED')),
          ),
        { timeoutMs: 5000 },
      );
      // The server holds no such stream: the watcher, which may look, does not find it.
      const watcherJsm = await jetstreamManager(watcher.nc, { timeout: 2000 });
      await assert.rejects(watcherJsm.streams.info(stream), /not found/i);
      // And a presence put lands nowhere (no stream takes it yet).
      const kv = await new Kvm(agent.nc).open(KV_BUCKETS.agents.bucket);
      await assert.rejects(kv.put('users-x', '{}'));
    } finally {
      await agent.nc.close();
      await watcher.nc.close();
    }
  });

  it('lets the services pull through the swarm, each as its own user', async () => {
    const registries = `${registry.host}=${registry.url}`;
    const stops: ServiceProcess[] = [];
    try {
      stops.push(await startTracker({ natsUrl: urlFor('tracker') }));
      stops.push(await startSeedServer({ natsUrl: urlFor('seedserver'), registries }));
      const agents: AgentProcess[] = [];
      for (const peerId of ['users-1', 'users-2']) {
        const agent = await startAgent({
          registries,
          defaultRegistry: registry.host,
          natsUrl: urlFor('agent'),
          peerId,
          env: { ...FAST_SWARM_ENV, ...PRESENCE_ENV },
        });
        agents.push(agent);
        stops.push(agent);
      }
      for (const [n, agent] of agents.entries()) {
        const outcomes = await pullBlobs(agent, { image, registry }, repository);
        outcomes.forEach((outcome, i) => {
          assert.equal(outcome.error, undefined);
          assert.equal(outcome.digest, image.blobs[i]?.digest);
        });
        // Every byte came from the seed or a peer: the swarm worked under these permissions,
        // the piece hashes by direct get and subscription (no consumer per download).
        assert.equal((await bytesBySource(agent)).origin, 0);
        assert.equal(
          await agent.metric('shoal_agent_piece_hash_reads_total', { path: 'consumer' }),
          0,
        );
        // And the seed's signed record read under them (a direct get by subject, or heard on
        // its subject): once the seed has verified the blobs (after the first, cold pull, which
        // may finish a small blob before the record comes), no blob is hashed twice.
        const byRecord = await agent.metric('shoal_agent_swarm_blob_checks_total', {
          by: 'seed-record',
        });
        if (n > 0) {
          assert.equal(byRecord, image.blobs.length);
        }
      }

      // The agents started before any presence bucket existed (they may not create it): each
      // said so once and kept working, trying again at the presence interval (not a growing
      // backoff that would outlast the entry's TTL). The watcher declares it, and they join it.
      for (const agent of agents) {
        const log = await readFile(join(agent.dir, 'agent.log'), 'utf8');
        assert.equal(log.match(/presence bucket shoal_agents missing/g)?.length, 1);
      }
      // A bucket an agent of an older release could have made, with a republish rule turning
      // presence puts into piece hashes (made here with the watcher's rights): the watcher
      // replaces it, and no put of the agents reaches that subject.
      const forgedSubject = `shoal.pieces.v1.hashes.sha256.${'d'.repeat(64)}`;
      // Listening before the bucket is planted: the republish rule must be seen to work
      // against the planted bucket (so that the count after the watcher's replacement means
      // something), then to stop once the watcher has replaced it.
      const listener = await connectAs('agent');
      const forgedHashes = listener.nc.subscribe(forgedSubject);
      await listener.nc.flush();
      const planted = await connectAs('watcher');
      await (
        await jetstreamManager(planted.nc)
      ).streams.add({
        name: `KV_${KV_BUCKETS.agents.bucket}`,
        subjects: [`$KV.${KV_BUCKETS.agents.bucket}.>`],
        allow_rollup_hdrs: true,
        republish: { src: `$KV.${KV_BUCKETS.agents.bucket}.users-1`, dest: forgedSubject },
      });
      await planted.nc.close();
      await waitFor(
        "users-1's presence put republished as piece hashes by the planted bucket",
        () => Promise.resolve(forgedHashes.getReceived() > 0),
        { timeoutMs: 10_000 },
      ).catch(async (error: unknown) => {
        await listener.nc.close();
        throw error;
      });

      const watcher = await startWatcher({
        natsUrl: urlFor('watcher'),
        registries,
        env: {
          SHOAL_WATCHER_AGENT_PRESENCE_INTERVAL_MS: PRESENCE_ENV.SHOAL_AGENT_PRESENCE_INTERVAL_MS,
        },
      });
      stops.push(watcher);
      const reader = await connectAs('watcher');
      try {
        const bucket = await new Kvm(reader.nc).open(KV_BUCKETS.agents.bucket);
        // The keys the stream holds, by one stream info (no consumer to set up and wait for).
        const readerJsm = await jetstreamManager(reader.nc, { timeout: 2000 });
        const present = async (): Promise<string[]> => {
          const info = await readerJsm.streams.info(`KV_${KV_BUCKETS.agents.bucket}`, {
            subjects_filter: '>',
          });
          const prefix = `$KV.${KV_BUCKETS.agents.bucket}.`;
          const keys = Object.keys(info.state.subjects ?? {}).map((s) => s.slice(prefix.length));
          return keys.sort();
        };
        await waitFor(
          'both agents in the bucket the watcher declared',
          async () => (await present()).join() === 'users-1,users-2',
          // Both retry every 150-300 ms; the bound leaves room for a loaded machine.
          { timeoutMs: 10_000 },
        );
        const status = await bucket.status();
        assert.equal(status.ttl, KV_BUCKETS.agents.ttlMs);
        assert.equal(status.streamInfo.config.republish, undefined);
        assert.equal(status.streamInfo.config.allow_rollup_hdrs, false);
        // A put with a rollup header would purge every other agent's entry: the bucket the
        // watcher declared refuses it, and both agents' entries stay.
        const rogue = await connectAs('agent');
        try {
          const rollup = headers();
          rollup.set('Nats-Rollup', 'all');
          await assert.rejects(
            jetstream(rogue.nc, { timeout: 2000 }).publish(
              `$KV.${KV_BUCKETS.agents.bucket}.users-1`,
              new Uint8Array([1]),
              { headers: rollup },
            ),
            /rollup not permitted/i,
          );
        } finally {
          await rogue.nc.close();
        }
        assert.equal((await present()).join(), 'users-1,users-2');
        // Both agents have put into the new bucket (above); every forged message of the planted
        // one has been delivered (a round trip after them). Three more presence intervals of
        // puts: none is republished any more.
        await listener.nc.flush();
        const forgedBefore = forgedHashes.getReceived();
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        await listener.nc.flush();
        assert.equal(forgedHashes.getReceived(), forgedBefore, 'no put republished after');
        const log = await readFile(join(watcher.dir, 'watcher.log'), 'utf8');
        assert.match(log, /KV bucket found with settings Shoal never declares/);
      } finally {
        await reader.nc.close();
        await listener.nc.close();
      }

      // Preheat onto every agent, the watcher and the agents as their own users.
      const job = await preheatAndWait(
        watcher.url,
        `${registry.host}/${repository}-preheat:${preheated.tag}`,
        'nodes',
      );
      assert.equal(job.state, 'done', JSON.stringify(job));
      assert.equal(job.blobsDone, preheated.blobs.length);
      assert.equal(job.nodesDone, agents.length);
    } finally {
      for (const service of stops.reverse()) {
        await service.stop();
      }
    }
  });

  it('refuses piece hashes and seed reports published by an agent', async () => {
    const nc: NatsConnection = await connect({
      servers: [`nats://${hostPort}`],
      user: 'agent',
      pass: PASSWORDS.agent,
    });
    try {
      const errors = serverErrors(nc);
      nc.publish('shoal.pieces.v1.hashes.sha256.' + 'a'.repeat(64), 'forged');
      await nc.flush();
      await waitFor('a permissions violation', () => Promise.resolve(errors.length > 0), {
        timeoutMs: 5000,
      });
      assert.match(errors.join('\n'), /permissions violation/i);
      // Nor a preheat report in the seed server's name.
      nc.publish('shoal.preheat.v1.report.p-1.seed.seed-a', 'forged');
      await nc.flush();
      await waitFor('a second violation', () => Promise.resolve(errors.length > 1), {
        timeoutMs: 5000,
      });
      assert.match(errors[1] ?? '', /shoal\.preheat\.v1\.report\.p-1\.seed\.seed-a/);
    } finally {
      await nc.close();
    }
  });

  it('refuses a wrong password', async () => {
    await assert.rejects(
      connect({ servers: [`nats://${hostPort}`], user: 'agent', pass: 'wrong' }),
      /authorization/i,
    );
  });
});
