/**
 * A real nats-server with JetStream for the agent's unit tests: the server, a connection, the
 * JetStream clients, and the streams a test names; `close` drains and stops it all.
 */
import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { StreamSpec } from '@shoal/proto';
import { ensureStreams } from '@shoal/runtime/nats';
import { startNats, type NatsServer } from '@shoal/testkit';

export interface JetStreamFixture {
  readonly nats: NatsServer;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  close(): Promise<void>;
}

export async function startJetStream(streams: readonly StreamSpec[]): Promise<JetStreamFixture> {
  const nats = await startNats();
  const nc = await connect({ servers: nats.url, timeout: 5_000 });
  const js = jetstream(nc, { timeout: 5_000 });
  const jsm = await jetstreamManager(nc, { timeout: 5_000 });
  await ensureStreams(jsm, streams, 1);
  return {
    nats,
    nc,
    js,
    jsm,
    close: async () => {
      await nc.drain();
      await nats.stop();
    },
  };
}
