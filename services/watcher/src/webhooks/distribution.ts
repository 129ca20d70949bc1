/**
 * The distribution registry's notifications (`notifications.endpoints` in its config): an
 * envelope of events, one per blob or manifest pushed or pulled. Only manifests pushed under
 * a tag are preheated: the blobs of an image arrive with its manifest, and the untagged
 * manifests of a multi-platform push are reached through the index pushed last.
 */
import { isDigest } from '@shoal/proto';
import { z } from 'zod';

import type { ImagePush, WebhookFormat } from './format.js';

const MANIFEST_MEDIA_TYPES = new Set([
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
]);

const event = z.looseObject({
  id: z.string().max(256),
  action: z.string().max(64),
  target: z.looseObject({
    mediaType: z.string().max(256).optional(),
    digest: z.string().max(256).optional(),
    repository: z.string().min(1).max(255),
    tag: z.string().max(128).optional(),
    url: z.string().max(2048).optional(),
  }),
  request: z.looseObject({ host: z.string().max(255).optional() }).optional(),
});

const envelope = z.looseObject({ events: z.array(event).min(1).max(1000) });

export const distributionFormat: WebhookFormat<typeof envelope> = {
  name: 'distribution',
  schema: envelope,
  read(payload) {
    const pushes: ImagePush[] = [];
    const ignored: string[] = [];
    for (const { id, action, target, request } of payload.events) {
      const isManifest =
        target.url?.includes('/manifests/') === true ||
        MANIFEST_MEDIA_TYPES.has(target.mediaType ?? '');
      if (action !== 'push') {
        ignored.push(`${id}: action ${action}`);
      } else if (!isManifest) {
        ignored.push(`${id}: not a manifest (${target.mediaType ?? 'no media type'})`);
      } else if (target.tag === undefined || target.tag === '') {
        ignored.push(`${id}: manifest pushed without a tag`);
      } else if (target.digest === undefined || !isDigest(target.digest)) {
        ignored.push(`${id}: no valid digest`);
      } else {
        pushes.push({
          host: request?.host ?? hostOf(target.url),
          repository: target.repository,
          digest: target.digest,
          tag: target.tag,
        });
      }
    }
    return { pushes, ignored };
  },
};

function hostOf(url: string | undefined): string | undefined {
  try {
    return url === undefined ? undefined : new URL(url).host;
  } catch {
    return undefined;
  }
}
