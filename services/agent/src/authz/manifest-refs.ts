/** The digests a manifest or index names: the content a repository holds along with it. */
import { parseDigest } from '@shoal/proto';

/** Most digests taken from one manifest; an image has tens, an index a few hundred. */
const MAX_REFERENCES = 4096;

interface Descriptor {
  readonly digest?: unknown;
  readonly urls?: unknown;
}

/**
 * The config, layer and child-manifest digests of an OCI/Docker manifest or index, valid ones
 * only; an empty list for anything that is not such JSON. A descriptor with `urls` (a foreign,
 * non-distributable layer) is left out: a registry takes such a manifest without holding that
 * content, so naming it proves nothing, and anyone able to push a manifest could otherwise
 * name another repository's private layer and have a node serve it from its cache.
 */
export function referencedDigests(bytes: Buffer): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch {
    return [];
  }
  if (typeof parsed !== 'object' || parsed === null) {
    return [];
  }
  const { config, layers, manifests, blobs } = parsed as Record<string, unknown>;
  const descriptors: unknown[] = [config];
  for (const list of [layers, manifests, blobs]) {
    if (Array.isArray(list)) {
      descriptors.push(...(list as unknown[]).slice(0, MAX_REFERENCES));
    }
  }
  const digests = new Set<string>();
  for (const descriptor of descriptors) {
    if (typeof descriptor !== 'object' || descriptor === null) {
      continue;
    }
    const { digest, urls } = descriptor as Descriptor;
    if (typeof digest !== 'string' || (Array.isArray(urls) && urls.length > 0)) {
      continue;
    }
    try {
      digests.add(parseDigest(digest).toString());
    } catch {
      // Not a digest we could be asked for: nothing to remember.
    }
    if (digests.size >= MAX_REFERENCES) {
      break;
    }
  }
  return [...digests];
}
