/** The digests a manifest or index names: the content a repository holds along with it. */
import { parseDigest } from '@shoal/proto';

/** Most digests taken from one manifest; an image has tens, an index a few hundred. */
const MAX_REFERENCES = 4096;

interface Descriptor {
  readonly digest?: unknown;
  readonly urls?: unknown;
}

/** The fields read here, by their case-folded spelling. */
const FIELDS = new Map(
  ['mediaType', 'config', 'layers', 'manifests', 'digest', 'urls'].map((f) => [fold(f), f]),
);
/** Deepest nesting and most keys looked at; past either, the document is not taken. */
const MAX_DEPTH = 16;
const MAX_KEYS = 100_000;

/** A key as Go's JSON decoder matches it to a field: case-insensitive, with its two odd folds. */
function fold(key: string): string {
  return key
    .toLowerCase()
    .replace(/\u017f/g, 's')
    .replace(/\u212a/g, 'k');
}

/**
 * Whether a registry reads the document as this code does. Registries written in Go decode
 * JSON keys case-insensitively (`Layers` and `layers` fill the same field, the last one
 * winning), where `JSON.parse` keeps them apart: a manifest with both could show the registry
 * the layers it holds and this code a private layer's digest. A document with a key that is one
 * of the fields read here but for its spelling is not taken at all.
 */
function readsAlike(document: object): boolean {
  let keys = 0;
  const walk = (value: unknown, depth: number): boolean => {
    if (typeof value !== 'object' || value === null) {
      return true;
    }
    if (depth > MAX_DEPTH) {
      return false;
    }
    if (Array.isArray(value)) {
      return value.every((item) => walk(item, depth + 1));
    }
    for (const [key, item] of Object.entries(value)) {
      keys += 1;
      const field = FIELDS.get(fold(key));
      if (keys > MAX_KEYS || (field !== undefined && field !== key) || !walk(item, depth + 1)) {
        return false;
      }
    }
    return true;
  };
  return walk(document, 0);
}

/**
 * Whether an object of the JSON `text` (valid JSON) has a key twice, spelled alike or in
 * another case. `JSON.parse` keeps the last one; Go's decoder decodes the second into what the
 * first filled (a first `layers` entry's `urls` stays, and a registry does not check a layer
 * with `urls`), so the two would read different layers.
 */
function repeatsAKey(text: string): boolean {
  /** Per open object the keys seen (folded); undefined for an array. */
  const open: (Set<string> | undefined)[] = [];
  let keyNext = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (c === '"') {
      let end = i + 1;
      while (end < text.length && text[end] !== '"') {
        end += text[end] === '\\' ? 2 : 1;
      }
      const keys = open[open.length - 1];
      if (keyNext && keys !== undefined) {
        const key = fold(JSON.parse(text.slice(i, end + 1)) as string);
        if (keys.has(key)) {
          return true;
        }
        keys.add(key);
        keyNext = false;
      }
      i = end;
    } else if (c === '{') {
      open.push(new Set());
      keyNext = true;
    } else if (c === '[') {
      open.push(undefined);
    } else if (c === '}' || c === ']') {
      open.pop();
    } else if (c === ',') {
      keyNext = open[open.length - 1] !== undefined;
    }
  }
  return false;
}

/**
 * A schema 1 manifest (signed, `fsLayers`): a registry that takes them checks its `fsLayers`
 * only, whatever else the document holds.
 */
function isSchema1(document: object): boolean {
  const { schemaVersion, fsLayers, signatures } = document as Record<string, unknown>;
  return schemaVersion === 1 || fsLayers !== undefined || signatures !== undefined;
}

const INDEX_TYPES = new Set([
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
]);
const IMAGE_TYPES = new Set([
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
]);

/**
 * The digests a registry made sure it holds before it took this manifest or index: an image
 * manifest's config and layers, an index's child manifests; valid ones only, and an empty list
 * for anything else. Only those: a registry takes other fields unchecked (an image manifest
 * with a `blobs` list, or an artifact's `subject`), so anyone able to push a manifest anywhere
 * could otherwise name another repository's private layer in one and have a node serve it from
 * its cache. The document's kind is its `mediaType`, or when it has none what it holds (both a
 * manifest's and an index's fields: neither). A descriptor with `urls` (a foreign,
 * non-distributable layer) is left out: a registry takes such a manifest without holding that
 * content.
 */
export function referencedDigests(bytes: Buffer): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch {
    return [];
  }
  if (
    typeof parsed !== 'object' ||
    parsed === null ||
    !readsAlike(parsed) ||
    repeatsAKey(bytes.toString('utf8')) ||
    isSchema1(parsed)
  ) {
    return [];
  }
  const { mediaType, config, layers, manifests } = parsed as Record<string, unknown>;
  const kind =
    typeof mediaType === 'string'
      ? INDEX_TYPES.has(mediaType)
        ? 'index'
        : IMAGE_TYPES.has(mediaType)
          ? 'image'
          : undefined
      : manifests !== undefined
        ? config === undefined && layers === undefined
          ? 'index'
          : undefined
        : 'image';
  const descriptors: unknown[] = [];
  if (kind === 'image') {
    descriptors.push(config);
    if (Array.isArray(layers)) {
      descriptors.push(...(layers as unknown[]).slice(0, MAX_REFERENCES));
    }
  } else if (kind === 'index' && Array.isArray(manifests)) {
    descriptors.push(...(manifests as unknown[]).slice(0, MAX_REFERENCES));
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
