import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { distributionFormat } from '../src/webhooks/distribution.js';
import { DeliveryError, FORMATS, type ReadDelivery } from '../src/webhooks/format.js';
import { harborFormat } from '../src/webhooks/harbor.js';

/** Fixtures stay in the source tree; tests run from `dist/test`. */
const FIXTURES = join(import.meta.dirname, '..', '..', 'test', 'fixtures');

function fixture(name: string): unknown {
  return JSON.parse(readFileSync(join(FIXTURES, name), 'utf8'));
}

interface DistributionEvent {
  id: string;
  action: string;
  target: {
    mediaType?: string;
    digest?: string;
    repository: string;
    url?: string;
    tag?: string;
  };
  request?: { host?: string };
}

interface HarborPayload {
  type: string;
  event_data: {
    resources: { digest?: string; tag?: string; resource_url?: string }[];
    repository: { repo_full_name: string };
  };
}

/** The fixture's events: a layer push, a config push, then the tagged manifest. */
function pushEvents(): DistributionEvent[] {
  return (fixture('distribution-push.json') as { events: DistributionEvent[] }).events;
}

function manifestEvent(): DistributionEvent {
  const event = pushEvents()[2];
  assert.ok(event !== undefined);
  return event;
}

function readDistribution(events: unknown): ReadDelivery {
  return distributionFormat.read(distributionFormat.schema.parse({ events }));
}

function readHarbor(payload: unknown): ReadDelivery {
  return harborFormat.read(harborFormat.schema.parse(payload));
}

const MANIFEST_DIGEST = 'sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f';
const HARBOR_DIGEST = 'sha256:97c8399621692a62a92594a8d4955321829fd2b010346f2c1478d0126f22bc8f';

describe('webhook formats', () => {
  it('are routed by name', () => {
    assert.deepEqual([...FORMATS.keys()].sort(), ['distribution', 'harbor']);
  });
});

describe('distribution notifications', () => {
  it('turn a push of a tagged manifest into one push, host from request.host', () => {
    const { pushes, ignored } = readDistribution(pushEvents());
    assert.deepEqual(pushes, [
      {
        host: 'registry.example.com:5000',
        repository: 'team/app',
        digest: MANIFEST_DIGEST,
        tag: 'v1.4.2',
      },
    ]);
    // The layer and the config arrive as blob pushes of their own.
    assert.equal(ignored.length, 2);
    assert.match(ignored[0] ?? '', /a01: not a manifest \(application\/vnd\.oci\.image\.layer/);
    assert.match(ignored[1] ?? '', /a02: not a manifest \(application\/vnd\.oci\.image\.config/);
  });

  it('prefer request.host, and take the target URL’s host when the request names none', () => {
    const proxied = manifestEvent();
    proxied.request = { host: 'registry.internal' };
    assert.equal(readDistribution([proxied]).pushes[0]?.host, 'registry.internal');
    const anonymous = manifestEvent();
    delete anonymous.request;
    assert.equal(readDistribution([anonymous]).pushes[0]?.host, 'registry.example.com:5000');
    const nowhere = manifestEvent();
    delete nowhere.request;
    nowhere.target.url = 'not a url/manifests/x';
    assert.equal(readDistribution([nowhere]).pushes[0]?.host, undefined);
  });

  it('recognise a manifest by its URL when the media type is missing', () => {
    const event = manifestEvent();
    delete event.target.mediaType;
    assert.equal(readDistribution([event]).pushes.length, 1);
  });

  it('ignore pulls, blob pushes, untagged manifests and bad digests, saying why', () => {
    const pull = { ...manifestEvent(), id: 'pull', action: 'pull' };
    const [blob] = pushEvents();
    assert.ok(blob !== undefined);
    const untagged = manifestEvent();
    untagged.id = 'untagged';
    delete untagged.target.tag;
    const emptyTag = manifestEvent();
    emptyTag.id = 'empty-tag';
    emptyTag.target.tag = '';
    const badDigest = manifestEvent();
    badDigest.id = 'bad-digest';
    badDigest.target.digest = 'sha256:not-hex';
    const noDigest = manifestEvent();
    noDigest.id = 'no-digest';
    delete noDigest.target.digest;

    const { pushes, ignored } = readDistribution([
      pull,
      blob,
      untagged,
      emptyTag,
      badDigest,
      noDigest,
    ]);
    assert.deepEqual(pushes, []);
    assert.deepEqual(ignored, [
      'pull: action pull',
      `${blob.id}: not a manifest (application/vnd.oci.image.layer.v1.tar+gzip)`,
      'untagged: manifest pushed without a tag',
      'empty-tag: manifest pushed without a tag',
      'bad-digest: no valid digest',
      'no-digest: no valid digest',
    ]);
  });

  it('reject an envelope without events, with no event, or with more than 1000', () => {
    const schema = distributionFormat.schema;
    assert.equal(schema.safeParse({}).success, false);
    assert.equal(schema.safeParse({ events: 'push' }).success, false);
    assert.equal(schema.safeParse({ events: [] }).success, false);
    const event = manifestEvent();
    assert.equal(
      schema.safeParse({ events: Array.from({ length: 1000 }, () => event) }).success,
      true,
    );
    assert.equal(
      schema.safeParse({ events: Array.from({ length: 1001 }, () => event) }).success,
      false,
    );
  });

  it('reject an event without a repository', () => {
    const event = manifestEvent() as { target: Record<string, unknown> };
    delete event.target.repository;
    assert.equal(distributionFormat.schema.safeParse({ events: [event] }).success, false);
  });
});

describe('Harbor webhooks', () => {
  const payload = (): HarborPayload => fixture('harbor-push-artifact.json') as HarborPayload;

  it('turn PUSH_ARTIFACT into pushes, host from the resource URL', () => {
    assert.deepEqual(readHarbor(payload()), {
      pushes: [
        {
          host: 'harbor.example.com',
          repository: 'library/app',
          digest: HARBOR_DIGEST,
          tag: 'v1.4.2',
        },
      ],
      ignored: [],
    });
  });

  it('acknowledge and ignore PULL_ARTIFACT and Harbor’s other event types', () => {
    for (const type of ['PULL_ARTIFACT', 'DELETE_ARTIFACT', 'SCANNING_COMPLETED']) {
      assert.deepEqual(readHarbor({ ...payload(), type }), {
        pushes: [],
        ignored: [`event type ${type}`],
      });
    }
  });

  it('refuse an event type Harbor does not send', () => {
    assert.throws(
      () => readHarbor({ ...payload(), type: 'PUSH_SOMETHING' }),
      (error: unknown) =>
        error instanceof DeliveryError &&
        /unknown Harbor event type "PUSH_SOMETHING"/.test(error.message),
    );
  });

  it('leave the tag out of a push by digest (the digest as its tag)', () => {
    const byDigest = payload();
    byDigest.event_data.resources = [
      {
        digest: HARBOR_DIGEST,
        tag: HARBOR_DIGEST,
        resource_url: `harbor.example.com/library/app@${HARBOR_DIGEST}`,
      },
      { digest: HARBOR_DIGEST, resource_url: `harbor.example.com/library/app@${HARBOR_DIGEST}` },
    ];
    const { pushes } = readHarbor(byDigest);
    assert.equal(pushes.length, 2);
    for (const push of pushes) {
      assert.equal(push.tag, undefined);
      assert.equal(push.digest, HARBOR_DIGEST);
      assert.equal(push.host, 'harbor.example.com');
    }
  });

  it('ignore resources without a valid digest, and take no host without a resource URL', () => {
    const mixed = payload();
    mixed.event_data.resources = [
      { tag: 'v1' },
      { digest: 'md5:abc', tag: 'v2' },
      { digest: HARBOR_DIGEST, tag: 'v3' },
    ];
    const { pushes, ignored } = readHarbor(mixed);
    assert.deepEqual(pushes, [
      { host: undefined, repository: 'library/app', digest: HARBOR_DIGEST, tag: 'v3' },
    ]);
    assert.deepEqual(ignored, [
      'a resource without a valid digest',
      'a resource without a valid digest',
    ]);
  });

  it('require the repository’s full name', () => {
    const incomplete = payload() as { event_data: { repository: Record<string, unknown> } };
    delete incomplete.event_data.repository.repo_full_name;
    assert.equal(harborFormat.schema.safeParse(incomplete).success, false);
  });
});
