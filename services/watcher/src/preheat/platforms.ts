/** Platforms (`os/arch[/variant]`) and how an image index's entries are matched against them. */
import { z } from 'zod';

const PLATFORM = /^[a-z0-9]+\/[a-z0-9]+(?:\/[a-z0-9]+)?$/;

/** A comma-separated platform list; empty means every platform. */
export const platformList = z
  .string()
  .default('')
  .transform((text, ctx): string[] => {
    const platforms = text
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p !== '');
    for (const platform of platforms) {
      if (!PLATFORM.test(platform)) {
        ctx.addIssue({ code: 'custom', message: `"${platform}" is not os/arch[/variant]` });
      }
    }
    return platforms;
  });

/** The `platform` object of an index entry. */
export interface IndexPlatform {
  readonly os?: string | undefined;
  readonly architecture?: string | undefined;
  readonly variant?: string | undefined;
}

/**
 * True when an index entry is wanted: attestations and other `unknown` platforms never are;
 * with no platforms configured, every real platform is. A wanted `linux/arm64` matches any
 * variant; `linux/arm/v7` only that variant.
 */
export function platformWanted(
  platform: IndexPlatform | undefined,
  wanted: readonly string[],
): boolean {
  if (platform?.os === 'unknown' || platform?.architecture === 'unknown') {
    return false;
  }
  if (wanted.length === 0) {
    return true;
  }
  if (platform?.os === undefined || platform.architecture === undefined) {
    return false;
  }
  return wanted.some((text) => {
    const [os, architecture, variant] = text.split('/');
    return (
      os === platform.os &&
      architecture === platform.architecture &&
      (variant === undefined || variant === platform.variant)
    );
  });
}
