import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { KV_BUCKETS, STREAMS } from '@shoal/proto';
import { pino } from 'pino';

import { ConfigError } from '../src/config.js';
import { connectNats, credsUserName } from '../src/nats.js';
import {
  accountPublicKey,
  AGENT_PERMISSION_TEMPLATE,
  newIdentitySeeds,
  nodeCreds,
  SERVICE_PERMISSIONS,
  SERVICE_ROLES,
  serviceCreds,
  type RolePermissions,
} from '../src/nats-identity.js';

/** deploy/k8s/base/nats/auth.conf: the password users' permissions. */
const AUTH_CONF = fileURLToPath(
  new URL('../../../../deploy/k8s/base/nats/auth.conf', import.meta.url),
);

const quoted = (list: string | undefined): string[] =>
  [...(list ?? '').matchAll(/"([^"]+)"/g)].map((m) => m[1] ?? '');

/** One role's block of auth.conf (`NAME = { ... }`), as permissions. */
function roleBlock(conf: string, name: string): RolePermissions {
  const block = new RegExp(`^${name} = \\{\\n([\\s\\S]*?)^\\}`, 'm').exec(conf)?.[1];
  assert.ok(block !== undefined, `no ${name} block in auth.conf`);
  const publish = /publish: \{\s*allow: \[([^\]]*)\](?:\s*deny: \[([^\]]*)\])?/.exec(block);
  const subscribe = /subscribe: \{\s*allow: \[([^\]]*)\]/.exec(block);
  const deny = quoted(publish?.[2]);
  const responses = /allow_responses: \{ max: (\d+), expires: "(\d+)s" \}/.exec(block);
  return {
    pub: { allow: quoted(publish?.[1]), ...(deny.length === 0 ? {} : { deny }) },
    sub: { allow: quoted(subscribe?.[1]) },
    ...(responses === null
      ? {}
      : { resp: { max: Number(responses[1]), ttlMs: Number(responses[2]) * 1_000 } }),
  };
}

/** True when every subject `pattern` matches is matched by `allow` (NATS wildcards). */
function covers(allow: string, pattern: string): boolean {
  const a = allow.split('.');
  const p = pattern.split('.');
  for (const [i, token] of a.entries()) {
    if (token === '>') {
      return p.length > i;
    }
    const other = p[i];
    if (other === undefined || other === '>' || (token !== '*' && token !== other)) {
      return false;
    }
  }
  return a.length === p.length;
}

describe('NATS identity permissions', () => {
  it('give each service role what the password users of deploy/k8s have', async () => {
    const conf = await readFile(AUTH_CONF, 'utf8');
    for (const role of SERVICE_ROLES) {
      assert.deepEqual(SERVICE_PERMISSIONS[role], roleBlock(conf, role.toUpperCase()), role);
    }
  });

  it('let an agent create or update no stream, under either scheme', async () => {
    // Whoever creates a stream picks its subjects, republish rules, sources and transforms:
    // an agent allowed to would have its own KV puts land on any subject (piece hashes).
    const agent = roleBlock(await readFile(AUTH_CONF, 'utf8'), 'AGENT');
    const names = [
      ...Object.values(STREAMS).map((spec) => spec.name),
      ...Object.values(KV_BUCKETS).map((spec) => `KV_${spec.bucket}`),
      'ANY_OTHER',
    ];
    const template = AGENT_PERMISSION_TEMPLATE.pub.allow;
    for (const name of names) {
      for (const op of ['CREATE', 'UPDATE']) {
        const subject = `$JS.API.STREAM.${op}.${name}`;
        for (const [scheme, allow] of [
          ['auth.conf', agent.pub.allow],
          ['template', template],
        ] as const) {
          const granted = allow.filter((a) => covers(a, subject));
          assert.deepEqual(granted, [], `${scheme} lets an agent publish ${subject}`);
        }
      }
    }
  });

  it('grant an agent only the stream operations on its allowlist, under either scheme', async () => {
    // Fail closed: a grant added later that reaches any other stream operation (delete,
    // purge, message delete, a wildcard over them) must be looked at here first.
    const allowlist = new Set([
      `$JS.API.STREAM.INFO.${STREAMS.pieces.name}`,
      `$JS.API.STREAM.INFO.${STREAMS.preheatNodes.name}`,
    ]);
    const agent = roleBlock(await readFile(AUTH_CONF, 'utf8'), 'AGENT');
    const names = [
      ...Object.values(STREAMS).map((spec) => spec.name),
      ...Object.values(KV_BUCKETS).map((spec) => `KV_${spec.bucket}`),
      'ANY_OTHER',
    ];
    const ops = ['CREATE', 'UPDATE', 'DELETE', 'PURGE', 'MSG.DELETE', 'SNAPSHOT', 'RESTORE'];
    for (const [scheme, allow] of [
      ['auth.conf', agent.pub.allow],
      ['template', AGENT_PERMISSION_TEMPLATE.pub.allow],
    ] as const) {
      const streamGrants = allow.filter(
        (a) => a.startsWith('$JS.API.STREAM.') || covers(a, '$JS.API.STREAM.DELETE.ANY_OTHER'),
      );
      assert.deepEqual(
        streamGrants.filter((a) => !allowlist.has(a)),
        [],
        `${scheme}: stream grants beyond the allowlist`,
      );
      for (const name of names) {
        for (const op of ops) {
          const subject = `$JS.API.STREAM.${op}.${name}`;
          assert.deepEqual(
            allow.filter((a) => covers(a, subject)),
            [],
            `${scheme} lets an agent publish ${subject}`,
          );
        }
      }
    }
  });

  it('give an agent no subject the shared agent user lacks', async () => {
    const agent = roleBlock(await readFile(AUTH_CONF, 'utf8'), 'AGENT');
    const asNode = (s: string): string => s.replaceAll('{{name()}}', 'node-a');
    for (const subject of AGENT_PERMISSION_TEMPLATE.pub.allow.map(asNode)) {
      assert.ok(
        agent.pub.allow.some((a) => covers(a, subject)),
        `publish ${subject} is not in auth.conf's AGENT`,
      );
    }
    for (const subject of AGENT_PERMISSION_TEMPLATE.sub.allow.map(asNode)) {
      assert.ok(
        agent.sub.allow.some((a) => covers(a, subject)),
        `subscribe ${subject} is not in auth.conf's AGENT`,
      );
    }
  });

  it('name every subject an agent speaks or reads as itself after it', () => {
    const own = [
      'shoal.swarm.v1.want.*.*.{{name()}}',
      'shoal.swarm.v1.have.*.*.{{name()}}',
      'shoal.swarm.v1.gone.{{name()}}',
      'shoal.preheat.v1.report.*.agent.{{name()}}',
      '$KV.shoal_agents.{{name()}}',
    ];
    for (const subject of own) {
      assert.ok(AGENT_PERMISSION_TEMPLATE.pub.allow.includes(subject), subject);
    }
    // Every Shoal subject an agent may publish ends with its own name: none is open to another.
    for (const subject of AGENT_PERMISSION_TEMPLATE.pub.allow.filter((s) =>
      s.startsWith('shoal.'),
    )) {
      assert.ok(subject.endsWith('.{{name()}}'), subject);
    }
    // It reads only its own inbox and hand-outs, and the piece hashes every node verifies
    // against, the seed's signed records of them and its intake notices (the same for all,
    // published by the seed server alone).
    assert.deepEqual(AGENT_PERMISSION_TEMPLATE.sub.allow, [
      '_INBOX.{{name()}}.>',
      'shoal.handout.v1.{{name()}}',
      'shoal.pieces.v1.hashes.>',
      'shoal.pieces.v1.verified.>',
      'shoal.intake.v1.>',
    ]);
  });
});

describe('NATS credentials', () => {
  const seeds = newIdentitySeeds();
  const issuer = { agentIssuer: seeds.agentIssuer, accountPublicKey: accountPublicKey(seeds) };

  it('name the node they were minted for, and the role of a service', async () => {
    const node = new TextDecoder().decode(await nodeCreds(issuer, 'node-a'));
    assert.match(node, /-----BEGIN USER NKEY SEED-----\nSU/);
    assert.equal(credsUserName(node), 'node-a');
    const tracker = new TextDecoder().decode(await serviceCreds(seeds, 'tracker'));
    assert.equal(credsUserName(tracker), 'tracker');
  });

  it('are minted for peer ids only', async () => {
    await assert.rejects(nodeCreds(issuer, 'node.a'), /not a peer id/);
    await assert.rejects(nodeCreds(issuer, '*'), /not a peer id/);
  });

  it('have no user name when the file holds no JWT', () => {
    assert.equal(credsUserName('nothing here'), undefined);
  });
});

describe('connectNats with credentials', () => {
  const seeds = newIdentitySeeds();
  const issuer = { agentIssuer: seeds.agentIssuer, accountPublicKey: accountPublicKey(seeds) };

  /** Calls connectNats with a node's credentials file; it must refuse before connecting. */
  async function refused(url: string, identity: string | undefined): Promise<ConfigError> {
    const dir = await mkdtemp(join(tmpdir(), 'creds-'));
    try {
      const file = join(dir, 'node.creds');
      await writeFile(file, await nodeCreds(issuer, 'node-a'));
      // Port 1: were the checks missing, the connection would fail, not hang.
      const error: unknown = await connectNats(
        { SHOAL_NATS_URL: url, SHOAL_NATS_CREDS_FILE: file, SHOAL_NATS_STREAM_REPLICAS: 1 },
        'test',
        pino({ level: 'silent' }),
        identity,
      ).then(
        async (nc) => {
          await nc.close();
          return undefined;
        },
        (e: unknown) => e,
      );
      assert.ok(error instanceof ConfigError, String(error));
      return error;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  it("refuses credentials for another peer id than the agent's", async () => {
    const error = await refused('nats://127.0.0.1:1', 'node-b');
    assert.match(
      error.message,
      /credentials are for user "node-a", not for this peer \("node-b"\)/,
    );
  });

  it('refuses a credentials file together with a user in the URL', async () => {
    const error = await refused('nats://agent:$(NATS_PASSWORD)@127.0.0.1:1', 'node-a');
    assert.match(error.message, /not both/);
  });
});
