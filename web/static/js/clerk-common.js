/*
 * Small helpers shared by the clerk console's modules (clerk.js, clerk-session.js,
 * clerk-prereview.js, clerk-wrapup.js): per-tab storage, catalog look-ups, ticket tags.
 */
import { h, t, nameOf } from "/static/js/ui.js";

const PREFIX = "hall.clerk.";

/** sessionStorage (this tab only, gone when it closes), JSON values, never throws. */
export const store = {
  get(key) {
    try {
      const raw = sessionStorage.getItem(PREFIX + key);
      return raw ? JSON.parse(raw) : null;
    } catch (err) {
      return null;
    }
  },
  set(key, value) {
    try {
      sessionStorage.setItem(PREFIX + key, JSON.stringify(value));
    } catch (err) {
      /* storage full or disabled: the console still works, a reload will not restore */
    }
  },
  remove(key) {
    try {
      sessionStorage.removeItem(PREFIX + key);
    } catch (err) {
      /* ignore */
    }
  },
  clear() {
    try {
      for (const key of Object.keys(sessionStorage)) {
        if (key.startsWith(PREFIX)) sessionStorage.removeItem(key);
      }
    } catch (err) {
      /* ignore */
    }
  },
};

/** The catalog's matter (or null) and its name in the page's language. */
export function matterOf(catalog, matterId) {
  if (!catalog || !catalog.matters) return null;
  return catalog.matters.find((m) => m.id === matterId) || null;
}

export function matterName(catalog, matterId) {
  const matter = matterOf(catalog, matterId);
  return matter ? nameOf(matter) : (matterId || t("unknown"));
}

/** A material's name in the page's language (the checklist carries the Chinese name). */
export function materialName(catalog, matterId, materialId, fallback) {
  const matter = matterOf(catalog, matterId);
  const material = matter && (matter.materials || []).find((m) => m.id === materialId);
  if (material) return nameOf(material);
  return fallback || materialId;
}

/** Badges for a ticket or an offer: kind, priority, callback, transfers. */
export function ticketTags(item) {
  if (!item) return [];
  const tags = [];
  if (item.kind) tags.push(h("span", { class: `tag tag-kind tag-${item.kind}` }, t(`kind_${item.kind}`)));
  if (item.priority) {
    tags.push(h("span", { class: `tag tag-priority tag-${item.priority}`, "data-priority": item.priority },
                t(`priority_${item.priority}`)));
  }
  if (item.callback) tags.push(h("span", { class: "tag tag-callback" }, t("tag_callback")));
  if (item.transfers) tags.push(h("span", { class: "tag tag-transfer" }, t("tag_transferred", { n: item.transfers })));
  return tags;
}

/** The callback line: the contact when the hall gives it, else what to do. */
export function callbackText(item) {
  if (!item || !item.callback) return "";
  const contact = item.callback_contact || item.contact;
  return contact ? t("callback_contact", { contact }) : t("callback_no_contact");
}

/** A shared file's name for display: exactly as the hall stored it. Never decoded: the hall
 * strips control and bidi characters from names, and percent-decoding here would bring them
 * back ("id-card%E2%80%AEgnp.exe" would show as a right-to-left override). */
export function displayName(filename) {
  return String(filename || "");
}

/** "12 KB" style sizes. */
export function formatSize(bytes) {
  const n = Number(bytes) || 0;
  if (n < 1024) return t("size_b", { n });
  if (n < 1024 * 1024) return t("size_kb", { n: Math.round(n / 1024) });
  return t("size_mb", { n: (n / (1024 * 1024)).toFixed(1) });
}

/** Local time as YYYYMMDD-HHMMSS (file names of snapshots). */
export function stamp(date) {
  const d = date || new Date();
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}`
    + `${p(d.getMinutes())}${p(d.getSeconds())}`;
}
