/**
 * Agents stay quiet through a plain NATS restart: they declare nothing again (no consumer or
 * stream created or updated), because at thousands of nodes that is a storm of JetStream API
 * calls exactly while a cluster recovers; the services (tracker, seed server, watcher) probe
 * what they own and write nothing that is as declared. What a restart with the store lost took from them
 * (each node's task consumer) they still declare again, after a spread wait; their presence
 * bucket the watcher declares again (agents may not create streams). Counted from the server's own API audit advisories, kept in a stream. Real
 * nats-server, tracker, seed server, watcher and agents.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { connect } from '@nats-io/transport-node';
import { KV_BUCKETS, preheatNodesConsumer, STREAMS } from '@shoal/proto';
import { isNotFound, jetStreamFor } from '@shoal/runtime/nats';
import {
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  Teardown,
  waitFor,
  type NatsServer,
} from '@shoal/testkit';

const AUDIT_STREAM = 'TEST_API_AUDIT';
const AUDIT_SUBJECT = '$JS.EVENT.ADVISORY.API';
const peers = ['agent-q1', 'agent-q2', 'agent-q3'];

/** The API subjects the server was asked for since `fromSeq` (exclusive), in order. */
async function auditedSince(url: string, fromSeq: number): Promise<string[]> {
  const nc = await connect({ servers: url });
  try {
    const { jsm } = await jetStreamFor(nc);
    const last = (await jsm.streams.info(AUDIT_STREAM)).state.last_seq;
    const subjects: string[] = [];
    for (let seq = fromSeq + 1; seq <= last; seq += 1) {
      const msg = await jsm.streams.getMessage(AUDIT_STREAM, { seq });
      const audit = msg?.json<{ subject?: string }>();
      if (audit?.subject !== undefined) {
        subjects.push(audit.subject);
      }
    }
    return subjects;
  } finally {
    await nc.close();
  }
}

async function auditLastSeq(url: string): Promise<number> {
  const nc = await connect({ servers: url });
  try {
    const { jsm } = await jetStreamFor(nc);
    try {
      return (await jsm.streams.info(AUDIT_STREAM)).state.last_seq;
    } catch (error) {
      if (!isNotFound(error)) {
        throw error;
      }
      await jsm.streams.add({ name: AUDIT_STREAM, subjects: [AUDIT_SUBJECT] });
      return 0;
    }
  } finally {
    await nc.close();
  }
}

/** True when every agent's task consumer and the presence bucket exist. */
async function agentsDeclared(url: string): Promise<boolean> {
  const nc = await connect({ servers: url });
  try {
    const { jsm } = await jetStreamFor(nc);
    await jsm.streams.info(`KV_${KV_BUCKETS.agents.bucket}`);
    for (const peer of peers) {
      await jsm.consumers.info(STREAMS.preheatNodes.name, preheatNodesConsumer(peer));
    }
    return true;
  } catch (error) {
    if (isNotFound(error)) {
      return false;
    }
    throw error;
  } finally {
    await nc.close();
  }
}

/**
 * The writes an agent could make: its task consumer created or updated. (The presence bucket's
 * create or update is the watcher's, and agents have no right to it: counted if seen at all.)
 */
function agentWrites(subjects: readonly string[]): string[] {
  const consumers = new Set(peers.map((p) => preheatNodesConsumer(p)));
  return subjects.filter((subject) => {
    const consumer = /^\$JS\.API\.CONSUMER\.(?:CREATE|DURABLE\.CREATE|UPDATE)\.([^.]+)\.(.+)$/.exec(
      subject,
    );
    if (consumer !== null) {
      const [, stream, rest] = consumer;
      return (
        stream === STREAMS.preheatNodes.name && [...consumers].some((c) => rest?.startsWith(c))
      );
    }
    return (
      subject === `$JS.API.STREAM.CREATE.KV_${KV_BUCKETS.agents.bucket}` ||
      subject === `$JS.API.STREAM.UPDATE.KV_${KV_BUCKETS.agents.bucket}`
    );
  });
}

describe('agents through NATS restarts', () => {
  const teardown = new Teardown();
  let nats: NatsServer;

  before(async () => {
    nats = await startNats();
    teardown.add('nats', () => nats.stop());
    const registry = await startRegistry();
    teardown.add('registry', () => registry.stop());
    const registries = `${registry.host}=${registry.url}`;
    const tracker = await startTracker({ natsUrl: nats.url });
    teardown.add('tracker', () => tracker.stop());
    const seed = await startSeedServer({ natsUrl: nats.url, registries });
    teardown.add('seed server', () => seed.stop());
    // The watcher owns the node-task stream the agents' consumers live on.
    const watcher = await startWatcher({ natsUrl: nats.url, registries });
    teardown.add('watcher', () => watcher.stop());
    for (const peerId of peers) {
      const agent = await startAgent({
        registries,
        natsUrl: nats.url,
        peerId,
        env: {
          SHOAL_AGENT_PRESENCE_INTERVAL_MS: '1000',
          SHOAL_AGENT_NATS_RECOVERY_SPREAD_MS: '2000',
        },
      });
      teardown.add(peerId, () => agent.stop());
    }
    await waitFor('the agents declared', () => agentsDeclared(nats.url), { timeoutMs: 30_000 });
  });

  after(async () => {
    await teardown.run();
  });

  it('a plain restart (store kept): agents and services create and update nothing', async () => {
    const from = await auditLastSeq(nats.url);
    await nats.crashAndRestart(1000);
    // Long enough for several presence beats and the widest recovery wait.
    await new Promise((resolve) => setTimeout(resolve, 8000));
    const subjects = await auditedSince(nats.url, from);
    // The audit works after the restart: the library's own check of each consumer is there.
    for (const peer of peers) {
      assert.ok(
        subjects.some((s) =>
          s.endsWith(`${STREAMS.preheatNodes.name}.${preheatNodesConsumer(peer)}`),
        ),
        `${peer}'s consumer checked after the reconnect (the audit sees the agents)`,
      );
    }
    assert.deepEqual(agentWrites(subjects), [], 'no consumer or bucket created or updated');
    // The services probe what they own after each reconnect, and write nothing that is
    // already as declared. The tracker's ordered consumer of the swarm stream (ephemeral, in
    // memory) went with the server and is made again: not counted.
    const ordered = `$JS.API.CONSUMER.CREATE.${STREAMS.swarm.name}.`;
    assert.deepEqual(
      subjects.filter(
        (s) =>
          /\.(CREATE|UPDATE)\./.test(s) &&
          !s.endsWith(`.${AUDIT_STREAM}`) &&
          !s.startsWith(ordered),
      ),
      [],
      'no stream or consumer of any service created or updated',
    );
    assert.ok(await agentsDeclared(nats.url));
  });

  it('a restart with the store lost: the agents declare their consumers again, the watcher their bucket', async () => {
    await nats.crashAndRestart(1000, { loseStore: true });
    await waitFor('the agents declared again', () => agentsDeclared(nats.url), {
      timeoutMs: 30_000,
    });
  });
});
