// Formatting of the figures the API returns, and the IOPS arithmetic.

export const DASH = '–';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

// size formats bytes in binary units, like the CLI ("10 GiB", "1.5 MiB").
export function size(n) {
  if (typeof n !== 'number' || !isFinite(n)) return DASH;
  let v = Math.abs(n);
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const s = u === 0 ? String(v) : String(Math.round(v * 100) / 100);
  return (n < 0 ? '-' : '') + s + ' ' + UNITS[u];
}

export function count(n) {
  return typeof n === 'number' && isFinite(n) ? n.toLocaleString('en') : DASH;
}

// rate formats a per-second figure; null (no second sample yet, or no
// stats endpoint) is a dash.
export function rate(n) {
  if (n === null || n === undefined || !isFinite(n)) return DASH;
  return n >= 100 ? Math.round(n).toLocaleString('en') : String(Math.round(n * 10) / 10);
}

export function time(s) {
  if (!s || s.startsWith('0001-')) return DASH;
  const d = new Date(s);
  return isNaN(d) ? s : d.toLocaleString();
}

// parseTime reads an RFC 3339 time with up to nanoseconds into seconds
// since the epoch; Date.parse alone keeps milliseconds at best.
export function parseTime(s) {
  if (typeof s !== 'string') return NaN;
  const m = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$/.exec(s);
  if (!m) return NaN;
  const whole = Date.parse(m[1] + m[3]);
  return whole / 1000 + (m[2] ? parseFloat('0' + m[2]) : 0);
}

const COUNTERS = ['read_ops', 'write_ops', 'flush_ops', 'trim_ops', 'read_bytes', 'write_bytes'];

// rates turns two samples of GET /api/v1/stats (cumulative counters) into
// per-second rates by vdisk, timed by the server's clock in the samples.
// A vdisk missing from either sample, or whose counters went back (its
// node restarted), gets no rate.
export function rates(prev, cur) {
  const out = {};
  if (!prev || !cur) return out;
  const dt = parseTime(cur.time) - parseTime(prev.time);
  if (!(dt > 0)) return out;
  for (const [name, c] of Object.entries(cur.vdisks || {})) {
    const p = prev.vdisks && prev.vdisks[name];
    if (!p) continue;
    const r = {};
    let ok = true;
    for (const k of COUNTERS) {
      const d = (c[k] || 0) - (p[k] || 0);
      if (d < 0) ok = false;
      r[k] = d / dt;
    }
    if (ok) out[name] = r;
  }
  return out;
}
