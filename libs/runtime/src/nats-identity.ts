/**
 * Imported as `@shoal/runtime/nats-identity`, apart from the rest of the runtime: only the
 * `shoal-nats-identity` command and tests mint credentials.
 *
 * Per-node identity on NATS with nats-server's decentralised (JWT) authentication, as
 * nats-server 2.9 supports it: an operator signs one account (SHOAL, JetStream on) and the
 * system account; the account signs one user per service role (tracker, seed server,
 * watcher) with that role's permissions; agents are users signed by the account's scoped
 * signing key "agent", whose permission template names the user (`{{name()}}`, the agent's
 * peer id) in every subject an agent may publish or read as itself. The server fills in the
 * template at login, so an agent's credentials allow it its own haves, wants, gone, reports,
 * presence entry, preheat consumer, hand-outs and inbox, and nobody else's.
 *
 * Whoever holds the "agent" signing key can mint any node's credentials: it belongs with the
 * node provisioning (beside the operator key), never on a node. A node holds only its own
 * user key and JWT.
 */
import {
  encodeAccount,
  encodeOperator,
  encodeUser,
  fmtCreds,
  newScopedSigner,
  type Permissions,
} from '@nats-io/jwt';
import { createAccount, createOperator, createUser, fromSeed, type KeyPair } from '@nats-io/nkeys';
import {
  handoutSubject,
  KV_BUCKETS,
  peerGoneSubject,
  peerId,
  PIECE_HASHES_SUBJECTS,
  PIECES_VERIFIED_SUBJECTS,
  preheatNodesConsumer,
  preheatReportSubject,
  SEED_INTAKE_SUBJECTS,
  STREAMS,
} from '@shoal/proto';

/** The user name placeholder nats-server replaces with the connecting user's name. */
const NAME = '{{name()}}';

/** Allowed (and denied) subjects for publishing and subscribing. */
export interface RolePermissions {
  readonly pub: { readonly allow: readonly string[]; readonly deny?: readonly string[] };
  readonly sub: { readonly allow: readonly string[]; readonly deny?: readonly string[] };
  /**
   * Replies allowed to requests received: at most `max` per request within `ttlMs` (NATS
   * response permissions; the reply subject need not be in `pub.allow`).
   */
  readonly resp?: { readonly max: number; readonly ttlMs: number };
}

/** The service roles that connect as one shared user each. */
export type ServiceRole = 'tracker' | 'seedserver' | 'watcher';
export const SERVICE_ROLES: readonly ServiceRole[] = ['tracker', 'seedserver', 'watcher'];

const { swarm, wants, pieces, seed, preheat, preheatEvents, preheatNodes } = STREAMS;
const agentsKv = `KV_${KV_BUCKETS.agents.bucket}`;
const seedLocksKv = `KV_${KV_BUCKETS.seedLocks.bucket}`;
const leaderKv = `KV_${KV_BUCKETS.watcherLeader.bucket}`;
const jobsKv = `KV_${KV_BUCKETS.preheatJobs.bucket}`;
/** `$JS.API.CONSUMER.<op>.<stream>` and `...<stream>.>` for every op. */
const consumerOps = (stream: string): string[] => [
  `$JS.API.CONSUMER.*.${stream}`,
  `$JS.API.CONSUMER.*.${stream}.>`,
];

/**
 * The agent's permission template. `{{name()}}` is the agent's peer id: the subjects that say
 * who is speaking (haves, wants and gone carry the peer as their last token; reports carry
 * role and peer) and what is one node's own (hand-outs, inbox, preheat consumer, presence key)
 * are open to that peer only. Piece hashes are read, never written: stored ones with direct
 * gets on SHOAL_PIECES, new ones on their subject while the seed hashes (the consumer
 * operations are for agents of before direct gets). No stream is created or updated by an
 * agent, its presence bucket included (the watcher declares it): a stream's creator picks its
 * subjects, republish rules, sources and transforms, so an agent allowed to create one could
 * have its own KV puts republished as piece hashes or as another peer's events.
 */
export const AGENT_PERMISSION_TEMPLATE: RolePermissions = {
  pub: {
    allow: [
      `shoal.swarm.v1.want.*.*.${NAME}`,
      `shoal.swarm.v1.have.*.*.${NAME}`,
      peerGoneSubject(NAME),
      preheatReportSubject('*', 'agent', NAME),
      '$JS.API.INFO',
      `$JS.API.STREAM.INFO.${pieces.name}`,
      `$JS.API.DIRECT.GET.${pieces.name}`,
      // A blob's signed pieces-verified record, the last message on its subject: a direct get
      // by subject names the subject after the stream.
      `$JS.API.DIRECT.GET.${pieces.name}.${PIECES_VERIFIED_SUBJECTS}`,
      `$JS.API.CONSUMER.CREATE.${pieces.name}`,
      `$JS.API.CONSUMER.CREATE.${pieces.name}.>`,
      `$JS.API.CONSUMER.INFO.${pieces.name}.>`,
      `$JS.API.CONSUMER.DELETE.${pieces.name}.>`,
      `$JS.API.CONSUMER.MSG.NEXT.${pieces.name}.>`,
      `$JS.API.STREAM.INFO.${preheatNodes.name}`,
      ...['CREATE', 'DURABLE.CREATE', 'INFO', 'MSG.NEXT'].map(
        (op) => `$JS.API.CONSUMER.${op}.${preheatNodes.name}.${preheatNodesConsumer(NAME)}`,
      ),
      // With a filter subject the name is followed by it (nats-server 2.10 and later).
      `$JS.API.CONSUMER.CREATE.${preheatNodes.name}.${preheatNodesConsumer(NAME)}.>`,
      `$JS.ACK.${preheatNodes.name}.${preheatNodesConsumer(NAME)}.>`,
      // Its presence key only; never a stream create or update (see below).
      `$KV.${KV_BUCKETS.agents.bucket}.${NAME}`,
    ],
  },
  sub: {
    allow: [
      `_INBOX.${NAME}.>`,
      handoutSubject(NAME),
      PIECE_HASHES_SUBJECTS,
      PIECES_VERIFIED_SUBJECTS,
      SEED_INTAKE_SUBJECTS,
    ],
  },
};

/** Each service role's permissions, the same as deploy/k8s/base/nats/auth.conf gives them. */
export const SERVICE_PERMISSIONS: Readonly<Record<ServiceRole, RolePermissions>> = {
  // The tracker owns the swarm and want streams, answers wants with hand-outs and asks the
  // seed server to seed what nobody holds.
  tracker: {
    pub: {
      allow: [
        handoutSubject('*'),
        'shoal.seed.v1.>',
        'shoal.tracker.v1.>',
        '$JS.API.INFO',
        `$JS.API.STREAM.*.${swarm.name}`,
        `$JS.API.STREAM.*.${wants.name}`,
        `$JS.API.STREAM.INFO.${seed.name}`,
        ...consumerOps(swarm.name),
        ...consumerOps(wants.name),
        `$JS.API.CONSUMER.MSG.NEXT.${swarm.name}.>`,
        `$JS.API.CONSUMER.MSG.NEXT.${wants.name}.>`,
        `$JS.ACK.${swarm.name}.>`,
        `$JS.ACK.${wants.name}.>`,
      ],
      deny: ['shoal.pieces.v1.>'],
    },
    // Tracker replicas hear each other's heartbeats and forward wants to a blob's owner,
    // which replies to the forwarding replica's inbox.
    sub: { allow: ['_INBOX.>', 'shoal.tracker.v1.>'] },
    resp: { max: 1, ttlMs: 10_000 },
  },
  // The seed server owns the piece-hash and seed-request streams and its lock bucket, and
  // announces itself as a peer that holds whole blobs.
  seedserver: {
    pub: {
      allow: [
        'shoal.pieces.v1.>',
        SEED_INTAKE_SUBJECTS,
        'shoal.swarm.v1.have.>',
        'shoal.swarm.v1.gone.>',
        preheatReportSubject('*', 'seed', '*'),
        '$JS.API.INFO',
        `$JS.API.STREAM.*.${pieces.name}`,
        `$JS.API.STREAM.*.${seed.name}`,
        `$JS.API.STREAM.*.${seedLocksKv}`,
        `$JS.API.STREAM.MSG.GET.${pieces.name}`,
        `$JS.API.DIRECT.GET.${pieces.name}`,
        `$JS.API.DIRECT.GET.${pieces.name}.>`,
        `$JS.API.DIRECT.GET.${seedLocksKv}`,
        `$JS.API.DIRECT.GET.${seedLocksKv}.>`,
        `$JS.API.STREAM.MSG.GET.${seedLocksKv}`,
        ...consumerOps(seed.name),
        `$JS.API.CONSUMER.MSG.NEXT.${seed.name}.>`,
        `$JS.ACK.${seed.name}.>`,
        `$KV.${KV_BUCKETS.seedLocks.bucket}.>`,
      ],
    },
    sub: { allow: ['_INBOX.>'] },
  },
  // The watcher owns the preheat streams and its buckets, asks the seed server for preheated
  // blobs, and declares and reads the agents' presence bucket.
  watcher: {
    pub: {
      allow: [
        'shoal.preheat.v1.>',
        'shoal.seed.v1.>',
        '$JS.API.INFO',
        `$JS.API.STREAM.*.${preheat.name}`,
        `$JS.API.STREAM.*.${preheatEvents.name}`,
        `$JS.API.STREAM.*.${preheatNodes.name}`,
        `$JS.API.STREAM.*.${agentsKv}`,
        ...consumerOps(agentsKv),
        `$JS.API.STREAM.*.${leaderKv}`,
        `$JS.API.STREAM.*.${jobsKv}`,
        '$JS.API.STREAM.MSG.GET.>',
        '$JS.API.DIRECT.GET.>',
        ...consumerOps(preheat.name),
        ...consumerOps(preheatEvents.name),
        ...consumerOps(leaderKv),
        ...consumerOps(jobsKv),
        '$JS.API.CONSUMER.MSG.NEXT.>',
        `$JS.ACK.${preheat.name}.>`,
        `$JS.ACK.${preheatEvents.name}.>`,
        `$KV.${KV_BUCKETS.watcherLeader.bucket}.>`,
        `$KV.${KV_BUCKETS.preheatJobs.bucket}.>`,
      ],
      deny: ['shoal.pieces.v1.>', 'shoal.swarm.v1.>'],
    },
    sub: {
      allow: [
        '_INBOX.>',
        'shoal.preheat.v1.>',
        `$KV.${KV_BUCKETS.watcherLeader.bucket}.>`,
        `$KV.${KV_BUCKETS.preheatJobs.bucket}.>`,
        `$KV.${KV_BUCKETS.agents.bucket}.>`,
      ],
    },
  },
};

/** The nkey seeds of an identity: everything else is derived from them. */
export interface IdentitySeeds {
  /** Signs the accounts; the root of trust, kept offline. */
  readonly operator: string;
  /** The SHOAL account; signs the service users. */
  readonly account: string;
  /** The system account nats-server reports through. */
  readonly system: string;
  /** The account's scoped signing key for agents: mints node credentials. */
  readonly agentIssuer: string;
}

/** New random seeds for an identity. */
export function newIdentitySeeds(): IdentitySeeds {
  const seedOf = (kp: KeyPair): string => new TextDecoder().decode(kp.getSeed());
  return {
    operator: seedOf(createOperator()),
    account: seedOf(createAccount()),
    system: seedOf(createAccount()),
    agentIssuer: seedOf(createAccount()),
  };
}

const keyPair = (seed: string): KeyPair => fromSeed(new TextEncoder().encode(seed));

/** The account's public key (`A...`), which node credentials name as their issuer account. */
export function accountPublicKey(seeds: Pick<IdentitySeeds, 'account'>): string {
  return keyPair(seeds.account).getPublicKey();
}

const toJwtPermissions = (p: RolePermissions): Partial<Permissions> => ({
  pub: { allow: [...p.pub.allow], deny: [...(p.pub.deny ?? [])] },
  sub: { allow: [...p.sub.allow], deny: [...(p.sub.deny ?? [])] },
  // nats-server reads the response window in nanoseconds.
  ...(p.resp === undefined ? {} : { resp: { max: p.resp.max, ttl: p.resp.ttlMs * 1_000_000 } }),
});

/** No limit on connections, subscriptions, payload or JetStream use within the account. */
const UNLIMITED_ACCOUNT = {
  subs: -1,
  data: -1,
  payload: -1,
  imports: -1,
  exports: -1,
  wildcards: true,
  conn: -1,
  leaf: -1,
  mem_storage: -1,
  disk_storage: -1,
  streams: -1,
  consumer: -1,
};

/**
 * The nats-server configuration of the identity (operator, system account, memory resolver
 * with both account JWTs preloaded), to include in place of the password users. It holds
 * public keys and signed claims only, no seed.
 */
export async function operatorConfig(seeds: IdentitySeeds): Promise<string> {
  const operator = keyPair(seeds.operator);
  const account = keyPair(seeds.account);
  const system = keyPair(seeds.system);
  const operatorJwt = await encodeOperator('shoal', operator, {
    system_account: system.getPublicKey(),
  });
  const accountJwt = await encodeAccount(
    'SHOAL',
    account,
    {
      limits: UNLIMITED_ACCOUNT,
      signing_keys: [
        newScopedSigner(
          keyPair(seeds.agentIssuer),
          'agent',
          toJwtPermissions(AGENT_PERMISSION_TEMPLATE),
        ),
      ],
    },
    { signer: operator },
  );
  const systemJwt = await encodeAccount('SYS', system, {}, { signer: operator });
  return [
    '# Made by shoal-nats-identity: public keys and signed claims only, no secret.',
    `operator: ${operatorJwt}`,
    `system_account: ${system.getPublicKey()}`,
    'resolver: MEMORY',
    'resolver_preload: {',
    `  ${account.getPublicKey()}: ${accountJwt}`,
    `  ${system.getPublicKey()}: ${systemJwt}`,
    '}',
    '',
  ].join('\n');
}

/** A credentials file (JWT and user seed) for one service role, signed by the account. */
export async function serviceCreds(seeds: IdentitySeeds, role: ServiceRole): Promise<Uint8Array> {
  const user = createUser();
  const jwt = await encodeUser(role, user, keyPair(seeds.account), {
    ...toJwtPermissions(SERVICE_PERMISSIONS[role]),
  });
  return fmtCreds(jwt, user);
}

/**
 * A credentials file for one node: a fresh user key, and a JWT naming the peer id, signed with
 * the agent issuer key. It carries no permissions of its own: the server applies the issuer's
 * template with this name. `expiresInMs` (default: none) bounds how long it is accepted.
 */
export async function nodeCreds(
  issuer: { readonly agentIssuer: string; readonly accountPublicKey: string },
  peer: string,
  options: { readonly expiresInMs?: number } = {},
): Promise<Uint8Array> {
  const parsed = peerId.safeParse(peer);
  if (!parsed.success) {
    throw new Error(`not a peer id: ${JSON.stringify(peer)} (1-64 of [A-Za-z0-9_-])`);
  }
  const user = createUser();
  const jwt = await encodeUser(
    parsed.data,
    user,
    issuer.accountPublicKey,
    {},
    {
      signer: keyPair(issuer.agentIssuer),
      scopedUser: true,
      ...(options.expiresInMs === undefined
        ? {}
        : { exp: Math.floor((Date.now() + options.expiresInMs) / 1000) }),
    },
  );
  return fmtCreds(jwt, user);
}
