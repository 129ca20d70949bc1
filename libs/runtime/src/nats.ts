/**
 * Imported as `@shoal/runtime/nats`, apart from the rest of the runtime, so a process that
 * does not use NATS does not load the client.
 *
 * The NATS side every service shares: one connection that reconnects forever, and the
 * idempotent creation of the streams and KV buckets a service owns (from `@shoal/proto`).
 */
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { KvSpec, StreamSpec } from '@shoal/proto';
import type { Logger } from 'pino';
import { Gauge } from 'prom-client';
import { z } from 'zod';

import {
  ConfigError,
  DEFAULT_NATS_PING_INTERVAL_MS,
  DEFAULT_NATS_RECONNECT_JITTER_MS,
  natsLivenessConfig,
  natsTlsConfig,
  refusePlaceholderSecret,
  type NatsTlsConfig,
} from './config.js';
import type { ServiceMetrics } from './metrics.js';
import { coalesceWrites } from './nats-writes.js';

export { natsTlsConfig, type NatsTlsConfig } from './config.js';

export type { NatsConnection } from '@nats-io/transport-node';

/** Configuration of the NATS connection, shared by every service. */
export const natsConfig = z.object({
  /**
   * Comma-separated NATS server URLs, e.g. `nats://nats-0:4222,nats://nats-1:4222`. A URL may
   * carry a user and password (`nats://agent:secret@nats:4222`, percent-encoded), which are
   * then used for every server, including those learned from the cluster.
   */
  SHOAL_NATS_URL: z.string().min(1).default('nats://127.0.0.1:4222'),
  /** Optional credentials file (JWT + nkey seed) for this service's NATS user. */
  SHOAL_NATS_CREDS_FILE: z.string().optional(),
  ...natsTlsConfig.shape,
  ...natsLivenessConfig.shape,
  /**
   * Replicas of each stream and KV bucket the service declares (the watcher's include the
   * agents' presence bucket `shoal_agents`; agents declare none); 3 in a production
   * JetStream cluster.
   */
  SHOAL_NATS_STREAM_REPLICAS: z
    .string()
    .regex(/^[135]$/, 'must be 1, 3 or 5')
    .transform(Number)
    .default(1),
});
export type NatsConfig = z.infer<typeof natsConfig>;

const nanos = (ms: number): number => ms * 1_000_000;

/** Pings unanswered after which the connection counts as dead (the client library's default). */
const MAX_PINGS_OUT = 2;

/**
 * Connects with reconnects forever; connection state changes are logged.
 *
 * With a credentials file, replies come to `_INBOX.<user name>.>`, the inbox per-node NATS
 * permissions leave to that user alone, and `identity` (an agent's peer id) must be the
 * user name the credentials carry: a node started with another node's credentials stops
 * with a configuration error rather than speak as that node.
 */
export async function connectNats(
  // The liveness settings may be left out (tests, tools): their defaults then.
  config: Omit<NatsConfig, 'SHOAL_NATS_PING_INTERVAL_MS' | 'SHOAL_NATS_RECONNECT_JITTER_MS'> &
    Partial<Pick<NatsConfig, 'SHOAL_NATS_PING_INTERVAL_MS' | 'SHOAL_NATS_RECONNECT_JITTER_MS'>>,
  name: string,
  logger: Logger,
  identity?: string,
): Promise<NatsConnection> {
  const { servers, user, pass } = parseNatsServers(config.SHOAL_NATS_URL);
  const pingMs = config.SHOAL_NATS_PING_INTERVAL_MS ?? DEFAULT_NATS_PING_INTERVAL_MS;
  const jitterMs = config.SHOAL_NATS_RECONNECT_JITTER_MS ?? DEFAULT_NATS_RECONNECT_JITTER_MS;
  const tls = natsTlsOptions(config, servers);
  const creds =
    config.SHOAL_NATS_CREDS_FILE === undefined
      ? undefined
      : await readCreds(config.SHOAL_NATS_CREDS_FILE);
  if (creds !== undefined && user !== undefined) {
    // The server would take one and ignore the other; which one is not for a reader to guess.
    throw new ConfigError([
      'SHOAL_NATS_CREDS_FILE: give a credentials file or a user in SHOAL_NATS_URL, not both',
    ]);
  }
  if (creds !== undefined && identity !== undefined && creds.userName !== identity) {
    throw new ConfigError([
      `SHOAL_NATS_CREDS_FILE: the credentials are for user ${JSON.stringify(creds.userName ?? '')}, ` +
        `not for this peer (${JSON.stringify(identity)}); mint them with the peer id`,
    ]);
  }
  const inboxPrefix =
    creds?.userName !== undefined && SUBJECT_TOKEN.test(creds.userName)
      ? `_INBOX.${creds.userName}`
      : undefined;
  const nc = await connect({
    servers,
    ...(user === undefined ? {} : { user, pass: pass ?? '' }),
    ...(tls === undefined ? {} : { tls }),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    // Spread: a server restart must not bring back a fleet of agents in one burst.
    reconnectJitter: jitterMs,
    reconnectJitterTLS: jitterMs,
    // A silent server is noticed by unanswered pings (there is no reset to tell); each
    // connection's interval drawn up to half as long again, so a fleet's pings are not in step.
    pingInterval: Math.round(pingMs * (1 + Math.random() / 2)),
    maxPingOut: MAX_PINGS_OUT,
    timeout: 5000,
    // Without it the client captures a stack (an Error) for every request and every
    // JetStream publish awaiting its ack, to decorate a timeout that rarely comes: CPU per
    // message on the hot paths (haves, wants, direct gets of piece hashes). A timeout still
    // says what timed out; the log line around it says where.
    noAsyncTraces: true,
    ...(creds === undefined ? {} : { authenticator: creds.authenticator }),
    ...(inboxPrefix === undefined ? {} : { inboxPrefix }),
  });
  if (!coalesceWrites(nc)) {
    logger.warn(
      'the NATS client is not the one coalesceWrites knows: it writes once per message handled',
    );
  }
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'disconnect' || status.type === 'error') {
        logger.warn({ nats: status.type }, 'nats connection problem');
      } else if (status.type === 'reconnect') {
        logger.info({ nats: status.type }, 'nats reconnected');
      }
    }
  })();
  return nc;
}

/**
 * The client's TLS options, or undefined for plain connections. A certificate without its
 * key (or the reverse) is a configuration error, not a silent plain connection.
 */
export function natsTlsOptions(
  config: NatsTlsConfig,
  servers: readonly string[],
): { caFile?: string; certFile?: string; keyFile?: string } | undefined {
  const { SHOAL_NATS_TLS_CA_FILE: caFile, SHOAL_NATS_TLS_CERT_FILE: certFile } = config;
  const keyFile = config.SHOAL_NATS_TLS_KEY_FILE;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new ConfigError([
      'SHOAL_NATS_TLS_CERT_FILE and SHOAL_NATS_TLS_KEY_FILE: give both or neither',
    ]);
  }
  const wanted =
    caFile !== undefined || certFile !== undefined || servers.some((s) => s.startsWith('tls://'));
  if (!wanted) {
    return undefined;
  }
  return {
    ...(caFile === undefined ? {} : { caFile }),
    ...(certFile === undefined ? {} : { certFile }),
    ...(keyFile === undefined ? {} : { keyFile }),
  };
}

/** Server URLs without credentials, and the user and password they carried, if any. */
export interface NatsServers {
  readonly servers: string[];
  readonly user?: string;
  readonly pass?: string;
}

/**
 * Splits `SHOAL_NATS_URL` into server URLs and moves credentials out of them: the NATS client
 * does not read them from a URL itself, and keeping them out of the server list keeps them out
 * of its error messages. Throws a ConfigError when URLs carry different credentials.
 */
export function parseNatsServers(text: string): NatsServers {
  const servers: string[] = [];
  let user: string | undefined;
  let pass: string | undefined;
  for (const entry of text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')) {
    const match = /^([a-z]+:\/\/)([^@/]*)@(.*)$/i.exec(entry);
    if (match === null) {
      servers.push(entry);
      continue;
    }
    const [, scheme = '', userinfo = '', rest = ''] = match;
    const colon = userinfo.indexOf(':');
    const thisUser = decodeURIComponent(colon === -1 ? userinfo : userinfo.slice(0, colon));
    const thisPass = colon === -1 ? undefined : decodeURIComponent(userinfo.slice(colon + 1));
    if (user !== undefined && (user !== thisUser || pass !== thisPass)) {
      throw new ConfigError(['SHOAL_NATS_URL: every URL must carry the same user and password']);
    }
    user = thisUser;
    pass = thisPass;
    servers.push(`${scheme}${rest}`);
  }
  return {
    servers,
    ...(user === undefined ? {} : { user }),
    ...(pass === undefined ? {} : { pass }),
  };
}

/** A user name that can stand as one subject token (peer ids and role names are). */
const SUBJECT_TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

const jwtClaims = z.object({ name: z.string().optional() });

/**
 * The user name a credentials file's JWT carries (its `name` claim), or undefined when the
 * file holds no readable JWT. Read, not verified: the server verifies the signature.
 */
export function credsUserName(creds: string): string | undefined {
  const jwt = /-----BEGIN NATS USER JWT-----\s*([A-Za-z0-9_.-]+)\s*-+END NATS USER JWT/.exec(
    creds,
  )?.[1];
  const payload = jwt?.split('.')[1];
  if (payload === undefined) {
    return undefined;
  }
  try {
    const claims = jwtClaims.safeParse(JSON.parse(Buffer.from(payload, 'base64url').toString()));
    return claims.success ? claims.data.name : undefined;
  } catch {
    return undefined;
  }
}

async function readCreds(path: string) {
  const { readFile } = await import('node:fs/promises');
  const { credsAuthenticator } = await import('@nats-io/transport-node');
  const creds = await readFile(path);
  const text = creds.toString('utf8');
  refusePlaceholderSecret(path, text);
  return { authenticator: credsAuthenticator(creds), userName: credsUserName(text) };
}

/** The stream configuration for a declared stream. */
export function streamConfig(
  spec: StreamSpec,
  replicas: number,
): Partial<StreamConfig> & { name: string } {
  return {
    name: spec.name,
    subjects: [...spec.subjects],
    description: spec.description,
    retention: spec.retention === 'workqueue' ? RetentionPolicy.Workqueue : RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_age: nanos(spec.maxAgeMs),
    duplicate_window: nanos(spec.duplicateWindowMs),
    max_msgs_per_subject: spec.maxMsgsPerSubject,
    max_bytes: spec.maxBytes,
    max_msgs: spec.maxMsgs,
    max_msg_size: spec.maxMsgSize,
    max_consumers: spec.maxConsumers,
    allow_direct: spec.allowDirect === true,
    num_replicas: replicas,
  };
}

/**
 * Creates the streams, or updates them to the declared configuration; resolves with the names
 * of those it had to create.
 */
export async function ensureStreams(
  jsm: JetStreamManager,
  specs: readonly StreamSpec[],
  replicas: number,
): Promise<string[]> {
  const created: string[] = [];
  for (const spec of specs) {
    const config = streamConfig(spec, replicas);
    try {
      const current = await jsm.streams.info(spec.name);
      // JetStream does not change max_consumers (nor the storage) of an existing stream.
      const updatable: Partial<StreamConfig> = { ...config };
      delete updatable.max_consumers;
      delete updatable.storage;
      // Only a stream that differs is updated: after every reconnect this is a read, not a
      // write per service replica while the cluster recovers.
      if (differs(current.config, updatable)) {
        await jsm.streams.update(spec.name, updatable);
      }
    } catch (error) {
      if (!isNotFound(error)) {
        throw error;
      }
      await jsm.streams.add(config);
      created.push(spec.name);
    }
  }
  return created;
}

/** The settings of a durable consumer that `ensureConsumer` keeps up to date. */
export interface DurableSettings {
  /** How long a delivered message may stay unacknowledged before redelivery, in ms. */
  readonly ackWaitMs: number;
  /** Deliveries before a message is given up on (-1: no limit). */
  readonly maxDeliver: number;
  /** Messages delivered and not yet acknowledged, at most. */
  readonly maxAckPending: number;
  /** Where a new consumer starts: every message kept (default), or those published since. */
  readonly startTime?: Date;
  /** Filter on the stream's subjects (one subject; nats-server 2.9 takes no list). */
  readonly filterSubject?: string;
  /** The server removes the consumer after this long without a client, in ms (0: never). */
  readonly inactiveMs?: number;
  /** Consumer replicas (default: the stream's). */
  readonly replicas?: number;
}

/**
 * Creates a durable pull consumer with explicit acks, or brings an existing one to these
 * settings; true when it had to create it. Replicas starting together may both create it: an
 * identical create succeeds.
 */
export async function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  durable: string,
  settings: DurableSettings,
): Promise<boolean> {
  const updatable = {
    ack_wait: nanos(settings.ackWaitMs),
    max_deliver: settings.maxDeliver,
    max_ack_pending: settings.maxAckPending,
    ...(settings.inactiveMs === undefined || settings.inactiveMs === 0
      ? {}
      : { inactive_threshold: nanos(settings.inactiveMs) }),
  } satisfies Partial<ConsumerConfig>;
  try {
    const current = await jsm.consumers.info(stream, durable);
    if (differs(current.config, updatable)) {
      await jsm.consumers.update(stream, durable, updatable);
    }
    return false;
  } catch (error) {
    if (!isNotFound(error)) {
      throw error;
    }
    await jsm.consumers.add(stream, {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      ...(settings.startTime === undefined
        ? { deliver_policy: DeliverPolicy.All }
        : {
            deliver_policy: DeliverPolicy.StartTime,
            opt_start_time: settings.startTime.toISOString(),
          }),
      ...(settings.filterSubject === undefined ? {} : { filter_subject: settings.filterSubject }),
      ...(settings.replicas === undefined ? {} : { num_replicas: settings.replicas }),
      ...updatable,
    });
    return true;
  }
}

/** True when `current` lacks one of `wanted`'s settings or holds another value for it. */
function differs(current: object, wanted: object): boolean {
  const held = current as Record<string, unknown>;
  return Object.entries(wanted).some(
    ([key, value]) => JSON.stringify(held[key]) !== JSON.stringify(value),
  );
}

/** True for the "not found" answers of JetStream's API (stream, consumer, key). */
export function isNotFound(error: unknown): boolean {
  return error instanceof Error && /not found/i.test(error.message);
}

/**
 * True for the answers a JetStream resource that is gone gives: "not found" from the API, and
 * "no responders" (503) from a publish to a subject no stream holds any more (a KV put into a
 * bucket lost with the server's store), which nats.js reports as "jetstream is not enabled".
 */
export function isMissingResource(error: unknown): boolean {
  return (
    isNotFound(error) ||
    (error instanceof Error &&
      /no responders|jetstream is not enabled|\b503\b/i.test(`${error.name} ${error.message}`))
  );
}

/**
 * Binds to a KV bucket another service declares, without any JetStream API call (so without
 * the right to create or even inspect its stream): a put or get fails with a missing resource
 * (`isMissingResource`) while the bucket does not exist, and works once it does.
 */
export async function bindKv(js: JetStreamClient, spec: KvSpec): Promise<KV> {
  return new Kvm(js).open(spec.bucket);
}

/**
 * The settings of a bucket's stream that differ from what Shoal declares for it. Some copy or
 * move its entries elsewhere (a republish rule, a mirror, sources, a subject transform,
 * subjects beyond `$KV.<bucket>.>`); the others let whoever made it stop the bucket's writers
 * or keep dead entries (sealed, no acknowledgements, another entry TTL, value size, byte limit
 * or history, deletes or purges denied). Empty for a bucket as declared. Replicas are left out:
 * an operator may change them.
 */
export function foreignKvSettings(config: Partial<StreamConfig>, spec: KvSpec): string[] {
  const found: string[] = [];
  const flag = (name: string, differs: boolean): void => {
    if (differs) {
      found.push(name);
    }
  };
  flag('republish', config.republish !== undefined);
  flag('mirror', config.mirror !== undefined);
  flag('sources', (config.sources ?? []).length > 0);
  flag('subject_transform', config.subject_transform !== undefined);
  const subjects = config.subjects ?? [];
  flag('subjects', subjects.length !== 1 || subjects[0] !== `$KV.${spec.bucket}.>`);
  flag('sealed', config.sealed === true);
  flag('no_ack', config.no_ack === true);
  flag('deny_delete', config.deny_delete === true);
  flag('deny_purge', config.deny_purge === true);
  flag('max_age', (config.max_age ?? 0) !== nanos(spec.ttlMs));
  flag('max_msg_size', config.max_msg_size !== spec.maxValueSize);
  flag('max_bytes', config.max_bytes !== spec.maxBytes);
  flag('max_msgs_per_subject', config.max_msgs_per_subject !== 1);
  return found;
}

/** Times `ensureKv` declares a bucket again after finding it replaced meanwhile. */
const KV_REPLACED_RETRIES = 2;

/**
 * Creates (or opens) a KV bucket with its declared TTL. An existing bucket keeps its settings,
 * except one whose stream carries `foreignKvSettings` (made by someone else, e.g. an agent of
 * a release that still could create the presence stream, with a republish rule that would put
 * its entries onto piece-hash subjects): that stream is deleted and declared again, and the
 * replacement logged. Only for buckets of short-lived entries that their writers refresh.
 * A bucket declared with `allowRollup: false` that allows rollups (nats.js creates every
 * bucket with them, and older releases kept that) is updated to refuse them.
 */
export async function ensureKv(
  js: JetStreamClient,
  spec: KvSpec,
  replicas: number,
  logger?: Logger,
): Promise<KV> {
  const create = (): Promise<KV> =>
    new Kvm(js).create(spec.bucket, {
      ttl: spec.ttlMs,
      replicas,
      history: 1,
      max_bytes: spec.maxBytes,
      maxValueSize: spec.maxValueSize,
      description: spec.description,
    });
  if (logger === undefined && spec.allowRollup !== false) {
    return create();
  }
  // Two watcher replicas may replace the same tampered bucket at once: the one whose status,
  // delete or update finds the stream gone lets the other's replacement stand, declares the
  // bucket again (a no-op if it exists) and checks that one.
  for (let attempt = 0; attempt < KV_REPLACED_RETRIES; attempt += 1) {
    try {
      const kv = await checkKv(js, spec, await create(), logger);
      if (kv !== undefined) {
        return kv;
      }
    } catch (error) {
      if (!isNotFound(error)) {
        throw error;
      }
      logger?.info({ bucket: spec.bucket }, 'KV bucket replaced meanwhile; declaring it again');
    }
  }
  const kv = await checkKv(js, spec, await create(), logger);
  if (kv === undefined) {
    throw new Error(`KV bucket ${spec.bucket} keeps being declared with foreign settings`);
  }
  return kv;
}

/**
 * `ensureKv`'s checks of a bucket just declared or opened: the bucket to use, or undefined
 * once a tampered one is deleted (to be declared again).
 */
async function checkKv(
  js: JetStreamClient,
  spec: KvSpec,
  kv: KV,
  logger: Logger | undefined,
): Promise<KV | undefined> {
  const { streamInfo } = await kv.status();
  const jsm = await js.jetstreamManager();
  const found = logger === undefined ? [] : foreignKvSettings(streamInfo.config, spec);
  if (found.length > 0) {
    logger?.warn(
      { bucket: spec.bucket, settings: found },
      'KV bucket found with settings Shoal never declares (entries copied elsewhere); deleting and declaring it again',
    );
    await jsm.streams.delete(streamInfo.config.name);
    return undefined;
  }
  if (spec.allowRollup === false && streamInfo.config.allow_rollup_hdrs) {
    await jsm.streams.update(streamInfo.config.name, { allow_rollup_hdrs: false });
    logger?.info({ bucket: spec.bucket }, 'KV bucket allowed rollups; updated to refuse them');
  }
  return kv;
}

/** Wait between attempts to declare again after a reconnect, in ms. */
const REDECLARE_RETRY_MS = 1000;

/**
 * Runs `declare` (a service's idempotent declarations: `ensureStreams`, `ensureConsumer`,
 * `ensureKv`) again after every reconnect, until it succeeds or the connection drops again.
 * A NATS server that comes back with its JetStream store lost (a replaced pod, a lost volume)
 * has none of the streams, consumers and buckets the service made at start-up: without this
 * every publish, consumer and bucket of the service fails until it is restarted. On a server
 * that kept its store it changes nothing (each declaration finds what it declares).
 */
export function redeclareOnReconnect(
  nc: NatsConnection,
  logger: Logger,
  declare: () => Promise<void>,
): void {
  let generation = 0;
  const run = async (mine: number): Promise<void> => {
    for (let attempt = 1; mine === generation && !nc.isClosed(); attempt += 1) {
      try {
        await declare();
        logger.info({ attempt }, 'streams, consumers and buckets declared again after a reconnect');
        return;
      } catch (error) {
        logger.warn(
          { err: error, attempt },
          'could not declare streams, consumers and buckets after a reconnect; trying again',
        );
      }
      await new Promise((resolve) => setTimeout(resolve, REDECLARE_RETRY_MS));
    }
  };
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'disconnect') {
        generation += 1;
      } else if (status.type === 'reconnect') {
        generation += 1;
        void run(generation);
      }
    }
  })();
}

/** Whether a connection is up, as its status events tell (see `followNatsLink`). */
export interface NatsLink {
  readonly up: boolean;
  /** Since when (ms, `Date.now`) the connection has been down; undefined while it is up. */
  readonly downSince: number | undefined;
}

/**
 * Follows the connection's state: down from a disconnect (or its close) until a reconnect.
 * `onChange` is told of each change.
 */
export function followNatsLink(nc: NatsConnection, onChange?: (up: boolean) => void): NatsLink {
  const closed = nc.isClosed();
  const link: { up: boolean; downSince: number | undefined } = {
    up: !closed,
    downSince: closed ? Date.now() : undefined,
  };
  void (async () => {
    for await (const status of nc.status()) {
      const up =
        status.type === 'reconnect'
          ? true
          : status.type === 'disconnect' || status.type === 'close'
            ? false
            : link.up;
      if (up !== link.up) {
        link.up = up;
        link.downSince = up ? undefined : Date.now();
        // A listener that throws must not stop the following.
        try {
          onChange?.(up);
        } catch {
          // Nothing to do: the state is kept whatever the listener did.
        }
      }
    }
  })().catch(() => undefined);
  return link;
}

/** How often stream usage is read for the metrics, in ms. */
const STREAM_USAGE_INTERVAL_MS = 30_000;

/**
 * Reports how full the service's own streams are, for the "JetStream storage near its limit"
 * alert: `shoal_<service>_jetstream_stream_bytes{stream}` and `..._max_bytes{stream}`, read
 * every 30 s (and once at once). A read that fails is logged at debug and tried again later.
 * `stop` ends it.
 */
export function watchStreamUsage(
  jsm: JetStreamManager,
  specs: readonly StreamSpec[],
  metrics: ServiceMetrics,
  logger: Logger,
): { stop(): void } {
  const registers = [metrics.registry];
  const bytes = new Gauge({
    name: `${metrics.prefix}jetstream_stream_bytes`,
    help: 'Bytes held by each JetStream stream this service owns',
    labelNames: ['stream'] as const,
    registers,
  });
  const maxBytes = new Gauge({
    name: `${metrics.prefix}jetstream_stream_max_bytes`,
    help: 'Byte limit of each JetStream stream this service owns (-1: none)',
    labelNames: ['stream'] as const,
    registers,
  });
  const read = async (): Promise<void> => {
    for (const spec of specs) {
      try {
        const info = await jsm.streams.info(spec.name);
        bytes.set({ stream: spec.name }, info.state.bytes);
        maxBytes.set({ stream: spec.name }, info.config.max_bytes);
      } catch (error) {
        logger.debug({ err: error, stream: spec.name }, 'stream usage unavailable');
      }
    }
  };
  void read();
  const timer = setInterval(() => void read(), STREAM_USAGE_INTERVAL_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}

/** JetStream handles for a connection. */
export async function jetStreamFor(
  nc: NatsConnection,
): Promise<{ js: JetStreamClient; jsm: JetStreamManager }> {
  return { js: jetstream(nc), jsm: await jetstreamManager(nc) };
}

/**
 * Waits for one step of a shutdown, at most `timeoutMs`: past it, logs that `what` did not
 * finish and returns, so that one stuck step (a request that never ends, a handle never
 * released) does not cost the shutdown its deadline. A step that fails is logged the same way.
 */
export async function settleWithin(
  what: string,
  step: Promise<unknown>,
  timeoutMs: number,
  logger: Logger,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    const result = await Promise.race([step.then(() => 'done' as const), timedOut]);
    if (result === 'timeout') {
      logger.warn({ step: what, timeoutMs }, 'a shutdown step did not finish in time; going on');
    }
  } catch (error) {
    logger.warn({ step: what, err: error }, 'a shutdown step failed; going on');
  } finally {
    clearTimeout(timer);
  }
}

/** Drains the connection, closing it outright if draining takes longer than `timeoutMs`. */
export async function drainWithin(
  nc: NatsConnection,
  timeoutMs: number,
  logger: Logger,
): Promise<void> {
  if (nc.isClosed()) {
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    const result = await Promise.race([nc.drain().then(() => 'drained' as const), timedOut]);
    if (result === 'timeout') {
      logger.warn({ timeoutMs }, 'NATS drain timed out; closing');
      await nc.close();
    }
  } catch (error) {
    logger.warn({ err: error }, 'NATS drain failed; closing');
    await nc.close();
  } finally {
    clearTimeout(timer);
  }
}

export {
  retryDelay,
  superviseConsumption,
  type ConsumeLoop,
  type SuperviseOptions,
} from './consume.js';
export { contextFromHeaders, traceHeaders } from './nats-trace.js';
export { coalesceWrites } from './nats-writes.js';
