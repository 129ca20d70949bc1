/**
 * A webhook format turns one registry's delivery into image pushes. Each format is a schema
 * and a reader; adding a registry means adding a file and a line in `FORMATS`, without
 * touching the others.
 */
import type { z } from 'zod';

import { distributionFormat } from './distribution.js';
import { harborFormat } from './harbor.js';

/** A manifest pushed under a tag: what a preheat is made from. */
export interface ImagePush {
  /** The registry's host as the sender saw it (`request.host`, a URL's host), if it said. */
  readonly host: string | undefined;
  readonly repository: string;
  /** The pushed manifest's digest. */
  readonly digest: string;
  readonly tag: string | undefined;
}

/** What a delivery held: pushes to preheat, and why the rest was ignored. */
export interface ReadDelivery {
  readonly pushes: readonly ImagePush[];
  readonly ignored: readonly string[];
}

/** A reason the delivery as a whole is refused (answered 400). */
export class DeliveryError extends Error {
  override readonly name = 'DeliveryError';
}

export interface WebhookFormat<S extends z.ZodType = z.ZodType> {
  /** The last segment of the route, `/webhooks/<name>`. */
  readonly name: string;
  readonly schema: S;
  /** Reads a delivery that passed the schema; throws DeliveryError to refuse it. */
  read(payload: z.infer<S>): ReadDelivery;
}

/** Every format the watcher accepts, by route name. */
export const FORMATS: ReadonlyMap<string, WebhookFormat> = new Map<string, WebhookFormat>(
  [distributionFormat, harborFormat].map((format) => [format.name, format as WebhookFormat]),
);
