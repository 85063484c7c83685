/** `pg-readonly-proxy doctor`: the entry point and what the CLI needs to parse its flags. */
export { EXIT_CANNOT_CONNECT, runDoctor, type DoctorOptions } from './doctor.js';
export { DEFAULT_FAIL_ON, parseSeverity, SEVERITIES, type Finding, type Severity } from './severity.js';
