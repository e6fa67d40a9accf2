// Ingest and reports at once, each at its own constant rate: what a
// dashboard sees while importers push. Tokens need both roles.
//
//   k6 run --summary-export mixed.json loadtests/k6/mixed.js
//
// INGEST_RATE (default 20/s), REPORT_RATE (default 10/s), DURATION
// (default 1m), BATCH, RESEND, INVALID, VUS as in ingest.js.
import { arrival, ms, num, requireTokens } from './lib.js';
import { ingest } from './ingest.js';
import { reports } from './reports.js';

export { ingest, reports };

const duration = __ENV.DURATION || '1m';
const vus = num('VUS', 20);

export const options = {
  scenarios: {
    ingest: arrival('ingest', num('INGEST_RATE', 20), duration, vus),
    reports: arrival('reports', num('REPORT_RATE', 10), duration, vus),
  },
  thresholds: {
    'http_req_failed{scenario:ingest}': ['rate<0.01'],
    'http_req_duration{scenario:ingest}': [`p(95)<${ms(1000)}`, `p(99)<${ms(2000)}`],
    'http_req_failed{scenario:reports}': ['rate<0.01'],
    'http_req_duration{scenario:reports}': [`p(95)<${ms(750)}`, `p(99)<${ms(1500)}`],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  requireTokens();
}
