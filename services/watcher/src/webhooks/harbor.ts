/**
 * Harbor's webhook (a project's webhook policy, "http" notify type): one event per delivery.
 * `PUSH_ARTIFACT` is preheated; Harbor's other event types are acknowledged and ignored, so a
 * policy subscribed to more than pushes does not retry; a type Harbor does not send is refused.
 */
import { isDigest } from '@shoal/proto';
import { z } from 'zod';

import { DeliveryError, type ImagePush, type WebhookFormat } from './format.js';

/** Harbor's event types (its webhook documentation); only the first is a push. */
const HARBOR_EVENT_TYPES = new Set([
  'PUSH_ARTIFACT',
  'PULL_ARTIFACT',
  'DELETE_ARTIFACT',
  'SCANNING_COMPLETED',
  'SCANNING_FAILED',
  'SCANNING_STOPPED',
  'QUOTA_EXCEED',
  'QUOTA_WARNING',
  'REPLICATION',
  'TAG_RETENTION',
]);

const payload = z.looseObject({
  type: z.string().max(64),
  occur_at: z.number().optional(),
  operator: z.string().max(256).optional(),
  event_data: z.looseObject({
    resources: z
      .array(
        z.looseObject({
          digest: z.string().max(256).optional(),
          tag: z.string().max(256).optional(),
          resource_url: z.string().max(2048).optional(),
        }),
      )
      .max(1000)
      .default([]),
    repository: z.looseObject({
      name: z.string().max(255).optional(),
      namespace: z.string().max(255).optional(),
      repo_full_name: z.string().min(1).max(255),
    }),
  }),
});

export const harborFormat: WebhookFormat<typeof payload> = {
  name: 'harbor',
  schema: payload,
  read({ type, event_data: data }) {
    if (!HARBOR_EVENT_TYPES.has(type)) {
      throw new DeliveryError(`unknown Harbor event type ${JSON.stringify(type.slice(0, 64))}`);
    }
    if (type !== 'PUSH_ARTIFACT') {
      return { pushes: [], ignored: [`event type ${type}`] };
    }
    const pushes: ImagePush[] = [];
    const ignored: string[] = [];
    for (const resource of data.resources) {
      if (resource.digest === undefined || !isDigest(resource.digest)) {
        ignored.push('a resource without a valid digest');
        continue;
      }
      // Harbor names a push by digest with the digest as its tag.
      const tag =
        resource.tag === undefined || resource.tag === resource.digest ? undefined : resource.tag;
      pushes.push({
        host: resource.resource_url?.split('/')[0],
        repository: data.repository.repo_full_name,
        digest: resource.digest,
        tag,
      });
    }
    return { pushes, ignored };
  },
};
