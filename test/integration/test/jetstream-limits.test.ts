/**
 * Every JetStream stream and KV bucket Shoal creates is bounded, on a real nats-server: the
 * tracker, seed server, watcher and agent create them with the declared limits (bytes, messages,
 * message size, consumers); a stream made by an earlier version without limits gets them when
 * its owner starts; a message over a stream's size limit is refused by the server and the
 * services keep running.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { KV_BUCKETS, STREAMS, type StreamSpec } from '@shoal/proto';
import {
  startNats,
  startRegistry,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';

import { startOneOfEach } from '../src/swarm.js';

describe('JetStream limits', () => {
  let nats: NatsServer;
  let registry: Registry;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  const services: ServiceProcess[] = [];

  before(async () => {
    nats = await startNats();
    registry = await startRegistry();
    nc = await connect({ servers: nats.url, timeout: 5_000 });
    jsm = await jetstreamManager(nc);
    // A swarm stream as an earlier version made it: no byte, message or size limit.
    await jsm.streams.add({
      name: STREAMS.swarm.name,
      subjects: [...STREAMS.swarm.subjects],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_msgs_per_subject: 1,
    });
    // The agent is there to write into its presence bucket, which the watcher declares.
    services.push(...(await startOneOfEach(nats.url, registry)));
  });

  after(async () => {
    for (const service of services) {
      await service.stop();
    }
    await nc.close();
    await registry.stop();
    await nats.stop();
  });

  it('creates every stream with its declared bounds (and bounds an existing one)', async () => {
    for (const spec of Object.values(STREAMS)) {
      const { config } = await jsm.streams.info(spec.name);
      assert.equal(config.max_bytes, spec.maxBytes, `${spec.name} max_bytes`);
      assert.equal(config.max_msgs, spec.maxMsgs, `${spec.name} max_msgs`);
      assert.equal(config.max_msg_size, spec.maxMsgSize, `${spec.name} max_msg_size`);
      assert.ok(config.max_bytes > 0 && config.max_msgs > 0 && config.max_msg_size > 0);
      const declared: StreamSpec = spec;
      assert.equal(config.allow_direct, declared.allowDirect === true, `${spec.name} allow_direct`);
      if (spec.name !== STREAMS.swarm.name) {
        // Set at creation; the swarm stream existed before, and JetStream keeps its count.
        assert.equal(config.max_consumers, spec.maxConsumers, `${spec.name} max_consumers`);
      }
    }
  });

  it('bounds every KV bucket', async () => {
    for (const spec of Object.values(KV_BUCKETS)) {
      const { config } = await jsm.streams.info(`KV_${spec.bucket}`);
      assert.equal(config.max_bytes, spec.maxBytes, `${spec.bucket} max_bytes`);
      assert.equal(config.max_msg_size, spec.maxValueSize, `${spec.bucket} max value size`);
    }
  });

  it('refuses a have over the size limit; the tracker keeps running', async () => {
    const js = jetstream(nc);
    // The services' own events (a seed server leaves its old swarms at start) are already in.
    const before = (await jsm.streams.info(STREAMS.swarm.name)).state;
    const oversize = new Uint8Array(STREAMS.swarm.maxMsgSize + 1);
    await assert.rejects(
      js.publish(`shoal.swarm.v1.have.sha256-${'a'.repeat(64)}.flood`, oversize),
      /maximum|size/i,
    );
    const after = (await jsm.streams.info(STREAMS.swarm.name)).state;
    assert.equal(after.last_seq, before.last_seq, 'nothing was stored');
    assert.ok(after.bytes < oversize.length, `${after.bytes} bytes in the stream`);
    const tracker = services[0];
    assert.ok(tracker !== undefined);
    assert.equal((await fetch(`${tracker.url}/readyz`)).status, 200);
  });
});
