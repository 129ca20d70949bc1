/**
 * Per-node identity on NATS (component nats-identity of deploy/k8s): a real nats-server runs
 * the rendered configuration with the operator, accounts and agent template that
 * `shoal-nats-identity init` makes; the real tracker, seed server and watcher sign in with
 * their role credentials and two agents with credentials minted for their own peer ids. The
 * swarm and node preheat work (piece hashes read by direct get and subscription), and the
 * server refuses an agent that publishes a have or a want as another peer or as the seed,
 * writes piece hashes, direct-gets another stream, takes another node's preheat consumer, or
 * reads another node's hand-outs or inbox.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import {
  encodeMessage,
  handoutSubject,
  KV_BUCKETS,
  pieceHashesSubject,
  piecesVerifiedSubject,
  pieceHave,
  pieceHaveSubject,
  pieceWantSubject,
  preheatNodesConsumer,
  STREAMS,
} from '@shoal/proto';
import {
  generateImage,
  makeTempDir,
  pushImage,
  requireBinary,
  run,
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

import { find, REPO_ROOT, renderWithComponents, type K8sObject } from '../src/deploy.js';
import { MiB } from '../src/files.js';
import { serverErrors } from '../src/nats-errors.js';
import { preheatAndWait } from '../src/preheat.js';
import { FAST_SWARM_ENV, bytesBySource, pullBlobs } from '../src/swarm.js';

const repository = 'deploy/nats-identity';
const NODES = ['ident-1', 'ident-2'] as const;
/** The seed server's id as deploy/k8s names it (`seed-<pod>`). */
const SEED_ID = 'seed-shoal-seedserver-0';
const CLI = join(REPO_ROOT, 'services', 'tracker', 'dist', 'src', 'nats-identity.js');
const BLOB = `sha256:${'b'.repeat(64)}`;

/** A connection as `peer` with its node credentials, and the errors the server sent it. */
interface NodeConnection {
  readonly nc: NatsConnection;
  readonly errors: string[];
}

describe('per-node NATS identity of deploy/k8s', () => {
  const cleanup: (() => Promise<void>)[] = [];
  const services: ServiceProcess[] = [];
  const agents: AgentProcess[] = [];
  let natsUrl = '';
  let identityDir = '';
  let registry: Registry;
  let image: GeneratedImage;
  let preheated: GeneratedImage;

  const credsEnv = (file: string): Record<string, string> => ({
    SHOAL_NATS_CREDS_FILE: join(identityDir, file),
  });

  const connectAs = async (peer: string): Promise<NodeConnection> => {
    const nc = await connect({
      servers: [natsUrl],
      authenticator: credsAuthenticator(await readFile(join(identityDir, `${peer}.creds`))),
      inboxPrefix: `_INBOX.${peer}`,
    });
    cleanup.push(() => nc.close());
    return { nc, errors: serverErrors(nc) };
  };

  /** Waits for the server's permissions violation naming `subject`. */
  const violation = (conn: NodeConnection, subject: string): Promise<void> =>
    waitFor(
      `a permissions violation for ${subject}`,
      () =>
        Promise.resolve(
          conn.errors.some((e) => /permissions violation/i.test(e) && e.includes(subject)),
        ),
      { timeoutMs: 5000 },
    );

  before(async () => {
    // Keys, the server's operator configuration, role and node credentials, by the CLI.
    const dir = await makeTempDir('nats-identity');
    cleanup.push(() => dir.remove());
    identityDir = dir.path;
    const node = requireBinary('node');
    await run(node, [CLI, 'init', identityDir]);
    for (const peer of NODES) {
      await run(node, [CLI, 'node', identityDir, peer, join(identityDir, `${peer}.creds`), '1']);
    }

    // The NATS configuration as the overlay renders it with the component: its auth.conf
    // includes ../nats-identity/operator.conf, the Secret the StatefulSet mounts there.
    const objects = await renderWithComponents('mixed', ['nats-identity']);
    const configMap = objects.find(
      (o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('shoal-nats-config'),
    );
    assert.ok(configMap !== undefined);
    const auth = (configMap.data as Record<string, string>)['auth.conf'] ?? '';
    assert.match(auth, /^include \.\.\/nats-identity\/operator\.conf$/m);
    // The tracker's settings as rendered: which peers may announce a seed.
    const tracker = find(objects, 'Deployment', 'shoal-tracker') as unknown as {
      spec: { template: { spec: { containers: { env?: { name: string; value?: string }[] }[] } } };
    };
    const trackerEnv = Object.fromEntries(
      (tracker.spec.template.spec.containers[0]?.env ?? [])
        .filter((e) => e.name.startsWith('SHOAL_TRACKER_SEED') && e.value !== undefined)
        .map((e) => [e.name, e.value ?? '']),
    );
    assert.equal(trackerEnv.SHOAL_TRACKER_SEED_PEERS, 'seed-shoal-seedserver-*');
    const nats = await startNats({
      configDir: 'nats',
      config: 'include ./auth.conf',
      files: {
        'nats/auth.conf': auth,
        'nats-identity/operator.conf': await readFile(join(identityDir, 'operator.conf'), 'utf8'),
      },
    });
    cleanup.push(() => nats.stop());
    natsUrl = nats.url;

    registry = await startRegistry();
    cleanup.push(() => registry.stop());
    const layout = await makeTempDir('image');
    cleanup.push(() => layout.remove());
    image = await generateImage(layout.path, { layerSizes: [3 * MiB, 1 * MiB], seed: 'ident' });
    await pushImage(image, registry.host, repository);
    preheated = await generateImage(join(layout.path, 'preheated'), {
      layerSizes: [2 * MiB],
      seed: 'ident-preheat',
    });
    await pushImage(preheated, registry.host, `${repository}-preheat`);

    const registries = `${registry.host}=${registry.url}`;
    services.push(
      await startTracker({ natsUrl, env: { ...trackerEnv, ...credsEnv('tracker.creds') } }),
    );
    services.push(
      await startSeedServer({
        natsUrl,
        registries,
        id: SEED_ID,
        env: credsEnv('seedserver.creds'),
      }),
    );
    for (const peerId of NODES) {
      const agent = await startAgent({
        registries,
        defaultRegistry: registry.host,
        natsUrl,
        peerId,
        // Presence every 300 ms: started before the watcher declares their bucket, they join
        // it within seconds of it.
        env: {
          ...FAST_SWARM_ENV,
          SHOAL_AGENT_PRESENCE_INTERVAL_MS: '300',
          ...credsEnv(`${peerId}.creds`),
        },
      });
      agents.push(agent);
      services.push(agent);
    }
    services.push(
      await startWatcher({
        natsUrl,
        registries,
        env: { SHOAL_WATCHER_AGENT_PRESENCE_INTERVAL_MS: '300', ...credsEnv('watcher.creds') },
      }),
    );
  });

  after(async () => {
    for (const service of services.reverse()) {
      await service.stop().catch(() => undefined);
    }
    for (const step of cleanup.reverse()) {
      await step().catch(() => undefined);
    }
  });

  it("renders the agents' side alone for a leecher cluster", async () => {
    const agentEnv = (objects: readonly K8sObject[]) => {
      const daemonSet = objects.find((o) => o.kind === 'DaemonSet') as unknown as {
        spec: {
          template: {
            spec: {
              containers: { env?: { name: string; value?: string }[] }[];
              volumes: { name: string; hostPath?: { path: string } }[];
            };
          };
        };
      };
      const pod = daemonSet.spec.template.spec;
      return {
        env: new Map((pod.containers[0]?.env ?? []).map((e) => [e.name, e.value])),
        hostPaths: pod.volumes.flatMap((v) => (v.hostPath === undefined ? [] : [v.hostPath.path])),
      };
    };
    const leecher = agentEnv(await renderWithComponents('leecher', ['nats-identity-agents']));
    assert.equal(leecher.env.get('SHOAL_NATS_CREDS_FILE'), '/etc/shoal/nats-identity/node.creds');
    assert.ok(leecher.hostPaths.includes('/etc/shoal/nats-identity'));
    assert.equal(leecher.env.has('NATS_PASSWORD'), false);
    const mixed = agentEnv(await renderWithComponents('mixed', ['nats-identity']));
    assert.equal(mixed.env.get('SHOAL_NATS_URL'), 'nats://shoal-nats:4222');
    assert.equal(mixed.env.get('SHOAL_NATS_CREDS_FILE'), '/etc/shoal/nats-identity/node.creds');
  });

  it('pulls through the swarm and preheats, every node and service as itself', async () => {
    for (const agent of agents) {
      const outcomes = await pullBlobs(agent, { image, registry }, repository);
      outcomes.forEach((outcome, i) => {
        assert.equal(outcome.error, undefined);
        assert.equal(outcome.digest, image.blobs[i]?.digest);
      });
      assert.equal((await bytesBySource(agent)).origin, 0);
      // The piece hashes came by direct get and the hash subject, which the template allows:
      // no consumer per download.
      const reads = (path: string): Promise<number> =>
        agent.metric('shoal_agent_piece_hash_reads_total', { path });
      assert.ok((await reads('stored')) + (await reads('live')) >= image.blobs.length);
      assert.equal(await reads('consumer'), 0);
    }
    const watcher = services.at(-1);
    assert.ok(watcher !== undefined);
    const job = await preheatAndWait(
      watcher.url,
      `${registry.host}/${repository}-preheat:${preheated.tag}`,
      'nodes',
    );
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.nodesDone, NODES.length);
  });

  it('refuses a have or a want as another peer or as the seed', async () => {
    const conn = await connectAs('ident-1');
    const js = jetstream(conn.nc);
    const have = (peer: string) =>
      encodeMessage(pieceHave, {
        type: 'piece-have',
        blob: BLOB,
        peer: { id: peer, url: 'http://127.0.0.1:1' },
        pieces: [[0, 1]],
        complete: true,
        seed: peer === SEED_ID,
      });
    // Its own have is stored: the refusals below are about identity, not a blanket deny.
    const ack = await js.publish(pieceHaveSubject(BLOB, 'ident-1'), have('ident-1'));
    assert.ok(ack.seq > 0);
    for (const [subject, body] of [
      [pieceHaveSubject(BLOB, 'ident-2'), have('ident-2')],
      [pieceHaveSubject(BLOB, SEED_ID), have(SEED_ID)],
      [pieceWantSubject(BLOB, 'ident-2'), have('ident-2')],
      [`shoal.swarm.v1.want.sha256.${'b'.repeat(64)}`, have('ident-2')],
    ] as const) {
      conn.nc.publish(subject, body);
      await conn.nc.flush();
      await violation(conn, subject);
    }
    // Nothing forged reached the swarm stream: only ident-1's own have is there for the blob.
    const jsm = await jetstreamManager(
      await connect({
        servers: [natsUrl],
        authenticator: credsAuthenticator(await readFile(join(identityDir, 'tracker.creds'))),
      }).then((nc) => {
        cleanup.push(() => nc.close());
        return nc;
      }),
    );
    const state = await jsm.streams.info(STREAMS.swarm.name, {
      subjects_filter: `shoal.swarm.v1.have.sha256.${'b'.repeat(64)}.>`,
    });
    assert.deepEqual(Object.keys(state.state.subjects ?? {}), [pieceHaveSubject(BLOB, 'ident-1')]);
  });

  it('lets an agent read piece hashes, never write them, and direct-get no other stream', async () => {
    const conn = await connectAs('ident-1');
    const blob = image.blobs[0]?.digest;
    assert.ok(blob !== undefined);
    // Reads: the stored hashes by direct get, and the subject they are published on.
    const jsm = await jetstreamManager(conn.nc);
    const stored = await jsm.direct.getMessage(STREAMS.pieces.name, {
      seq: 1,
      next_by_subj: pieceHashesSubject(blob),
    });
    assert.equal(stored?.json<{ blob: string }>().blob, blob);
    // The seed's signed record of a blob, the last message on its own subject: a direct get by
    // subject, which NATS checks against the subject appended to the stream's.
    const last = await jsm.direct.getMessage(STREAMS.pieces.name, {
      last_by_subj: piecesVerifiedSubject(blob),
    });
    assert.equal(last?.json<{ type: string }>().type, 'pieces-verified');
    conn.nc.subscribe(pieceHashesSubject(blob));
    conn.nc.subscribe(piecesVerifiedSubject(blob));
    await conn.nc.flush();
    // Writes and other streams: refused.
    conn.nc.publish(pieceHashesSubject(BLOB), '{}');
    await conn.nc.flush();
    await violation(conn, pieceHashesSubject(BLOB));
    conn.nc.publish(piecesVerifiedSubject(BLOB), '{}');
    await conn.nc.flush();
    await violation(conn, piecesVerifiedSubject(BLOB));
    const otherDirect = `$JS.API.DIRECT.GET.${STREAMS.swarm.name}`;
    conn.nc.publish(otherDirect, JSON.stringify({ seq: 1 }), { reply: '_INBOX.ident-1.peek' });
    await conn.nc.flush();
    await violation(conn, otherDirect);
    assert.ok(!conn.errors.some((e) => e.includes(pieceHashesSubject(blob))));
    assert.ok(!conn.errors.some((e) => e.includes(piecesVerifiedSubject(blob))));
  });

  it('refuses an agent any stream create or update, its presence bucket included', async () => {
    const conn = await connectAs('ident-1');
    const stream = `KV_${KV_BUCKETS.agents.bucket}`;
    // A republish rule would turn the agent's presence puts into piece hashes.
    const forged = {
      name: stream,
      subjects: [`$KV.${KV_BUCKETS.agents.bucket}.>`],
      republish: {
        // A single key: nats-server refuses a republish of `>` onto one literal subject.
        src: `$KV.${KV_BUCKETS.agents.bucket}.ident-1`,
        dest: pieceHashesSubject(BLOB),
      },
    };
    for (const subject of [
      `$JS.API.STREAM.CREATE.${stream}`,
      `$JS.API.STREAM.UPDATE.${stream}`,
      '$JS.API.STREAM.CREATE.FORGED',
    ]) {
      conn.nc.publish(subject, JSON.stringify(forged), { reply: '_INBOX.ident-1.create' });
      await conn.nc.flush();
      await violation(conn, subject);
    }
    // Its own presence entry it still writes, into the bucket the watcher declared.
    const kv = await new Kvm(conn.nc).open(KV_BUCKETS.agents.bucket);
    await kv.put('ident-1', JSON.stringify({ probe: true }));
    // Nobody else's.
    await assert.rejects(kv.put('ident-2', '{}'));
  });

  it("refuses another node's preheat consumer", async () => {
    const conn = await connectAs('ident-1');
    const jsm = await jetstreamManager(conn.nc);
    // Its own consumer answers (the agent made it for the preheat above)...
    const own = await jsm.consumers.info(
      STREAMS.preheatNodes.name,
      preheatNodesConsumer('ident-1'),
    );
    assert.equal(own.name, preheatNodesConsumer('ident-1'));
    // ...another node's does not: no info, no messages, no acks in its name.
    const other = preheatNodesConsumer('ident-2');
    await assert.rejects(jsm.consumers.info(STREAMS.preheatNodes.name, other));
    await violation(conn, `$JS.API.CONSUMER.INFO.${STREAMS.preheatNodes.name}.${other}`);
    const next = `$JS.API.CONSUMER.MSG.NEXT.${STREAMS.preheatNodes.name}.${other}`;
    conn.nc.publish(next, JSON.stringify({ batch: 1, expires: 1_000_000_000 }), {
      reply: '_INBOX.ident-1.steal',
    });
    await conn.nc.flush();
    await violation(conn, next);
    const ackSubject = `$JS.ACK.${STREAMS.preheatNodes.name}.${other}.1.1.1.0.0`;
    conn.nc.publish(ackSubject, '+ACK');
    await conn.nc.flush();
    await violation(conn, ackSubject);
    // Nor may it make a consumer in another node's name to read that node's tasks.
    const create = `$JS.API.CONSUMER.CREATE.${STREAMS.preheatNodes.name}.${other}`;
    conn.nc.publish(create, '{}');
    await conn.nc.flush();
    await violation(conn, create);
  });

  it("keeps an agent started with another node's credentials out of the swarm", async () => {
    // The node's credentials name ident-1; this agent is told it is ident-3.
    const agent = await startAgent({
      registries: `${registry.host}=${registry.url}`,
      defaultRegistry: registry.host,
      natsUrl,
      peerId: 'ident-3',
      env: { ...FAST_SWARM_ENV, ...credsEnv('ident-1.creds') },
    });
    try {
      // It stays a plain mirror and says why: the settings, not the network, are wrong.
      await waitFor(
        'the refused join',
        async () => (await agent.metric('shoal_agent_swarm_join_failures_total')) === 1,
        { timeoutMs: 10_000 },
      );
      assert.equal(await agent.metric('shoal_agent_swarm_joined'), 0);
      const log = await readFile(agent.process.logPath, 'utf8');
      assert.match(
        log,
        /credentials are for user \\"ident-1\\", not for this peer \(\\"ident-3\\"\)/,
      );
    } finally {
      await agent.stop();
    }
  });

  it("refuses another node's hand-outs and inbox, and delivers its own", async () => {
    const conn = await connectAs('ident-1');
    for (const subject of [handoutSubject('ident-2'), '_INBOX.ident-2.>', '_INBOX.>']) {
      conn.nc.subscribe(subject);
      await conn.nc.flush();
      await violation(conn, subject);
    }
    // Its own hand-out subject is open to it, and the tracker answers a want there.
    const own = conn.nc.subscribe(handoutSubject('ident-1'), { max: 1, timeout: 10_000 });
    await conn.nc.flush();
    const blob = image.blobs[0]?.digest;
    assert.ok(blob !== undefined);
    await jetstream(conn.nc).publish(
      pieceWantSubject(blob, 'ident-1'),
      JSON.stringify({
        type: 'piece-want',
        blob,
        peer: { id: 'ident-1', url: 'http://127.0.0.1:1' },
        have: [],
        registry: registry.host,
        repository,
      }),
    );
    for await (const msg of own) {
      const handout = msg.json<{ blob: string; peers: { peer: { id: string } }[] }>();
      assert.equal(handout.blob, blob);
      assert.ok(handout.peers.some((p) => p.peer.id === 'ident-2'));
    }
  });
});
