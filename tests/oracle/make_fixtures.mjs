// Conformance fixtures from the official ACS JS SDK (@azure/communication-call-automation 1.6.0).
//
// Regenerate (Node 18+):
//   mkdir -p /tmp/oracle && cd /tmp/oracle && npm init -y && npm install @azure/communication-call-automation@1.6.0
//   NODE_PATH=/tmp/oracle/node_modules node tests/oracle/make_fixtures.mjs
// Writes tests/oracle/sdk_fixtures.json next to this script. The tests read only that JSON.
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(process.env.NODE_PATH ? join(process.env.NODE_PATH, "x.js") : import.meta.url);
const sdk = require("@azure/communication-call-automation");
const { StreamingData, createOutboundAudioData, createOutboundStopAudioData } = sdk;

const pcm = (n) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + 3) & 255));
// In 1.6.0 the helpers return the JSON text itself (a string), which is what goes on the wire.
const text = (v) => (typeof v === "string" ? v : JSON.stringify(v));
const outbound = [0, 2, 3, 7, 640, 960, 1280, 4800].map((n) => {
  const data_b64 = pcm(n).toString("base64");
  return { bytes: n, data_b64, json: text(createOutboundAudioData(data_b64)) };
});
const stop = text(createOutboundStopAudioData());

const b64 = pcm(640).toString("base64");
const ts = "2024-11-15T19:16:12.925Z";
const acs = "8:acs:3d20e1de-0f28-41c5-84c4-4a7e0a6c1b3e_00000020-aaaa-bbbb-cccc-000000000000";
const cases = {
  metadata_16k: `{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"89e8cb59-b991-48b0-b154-1db84f16a077","encoding":"PCM","sampleRate":16000,"channels":1,"length":640}}`,
  metadata_24k: `{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"89e8cb59-b991-48b0-b154-1db84f16a077","encoding":"PCM","sampleRate":24000,"channels":1,"length":960}}`,
  audio_mixed: `{"kind":"AudioData","audioData":{"timestamp":"${ts}","data":"${b64}","silent":false}}`,
  audio_unmixed_acs: `{"kind":"AudioData","audioData":{"timestamp":"${ts}","participantRawID":"${acs}","data":"${b64}","silent":false}}`,
  audio_unmixed_phone: `{"kind":"AudioData","audioData":{"timestamp":"${ts}","participantRawID":"4:+14255550123","data":"${b64}","silent":false}}`,
  audio_silent: `{"kind":"AudioData","audioData":{"timestamp":"${ts}","data":"AAAAAAAAAAA=","silent":true}}`,
  audio_participant_null: `{"kind":"AudioData","audioData":{"timestamp":"${ts}","participantRawID":null,"data":"${b64}","silent":false}}`,
  audio_empty_data: `{"kind":"AudioData","audioData":{"timestamp":"${ts}","data":"","silent":true}}`,
  dtmf_3: `{"kind":"DtmfData","dtmfData":{"data":"3"}}`,
  dtmf_star: `{"kind":"DtmfData","dtmfData":{"data":"*"}}`,
  dtmf_pound: `{"kind":"DtmfData","dtmfData":{"data":"#"}}`,
  dtmf_word: `{"kind":"DtmfData","dtmfData":{"data":"asterisk"}}`,
  dtmf_full: `{"kind":"DtmfData","dtmfData":{"data":"5","timestamp":"${ts}","participantRawID":"4:+14255550123"}}`,
  transcription_metadata: `{"kind":"TranscriptionMetadata","transcriptionMetadata":{"subscriptionId":"a1b2c3d4-0000-4000-8000-000000000001","locale":"en-us","callConnectionId":"401f3500-62bd-46a9-8c09-9e1b06caca01","correlationId":"ebd8bf1f-0794-494f-bdda-913042c06ef7","speechRecognitionModelEndpointId":"0b5f0c2e-1111-4222-8333-444455556666"}}`,
  transcription_full: `{"kind":"TranscriptionData","transcriptionData":{"text":"Testing transcription.","format":"display","confidence":0.695,"offset":2516998782,"duration":15000000,"words":[{"text":"testing","offset":2516998782,"duration":5000000},{"text":"transcription","offset":2521998782,"duration":10000000}],"participantRawID":"${acs}","resultStatus":"Final"}}`,
  transcription_no_words: `{"kind":"TranscriptionData","transcriptionData":{"text":"Hi.","format":"display","confidence":0.9,"offset":100,"duration":200,"participantRawID":"${acs}","resultStatus":"Intermediate"}}`,
  transcription_no_participant: `{"kind":"TranscriptionData","transcriptionData":{"text":"Hi.","format":"display","offset":100,"duration":200,"words":[],"resultStatus":"final"}}`,
  transcription_big_offset: `{"kind":"TranscriptionData","transcriptionData":{"text":"Big.","format":"display","confidence":0.5,"offset":2516998782481234400,"duration":15000000,"words":[],"participantRawID":"${acs}","resultStatus":"Final"}}`,
  unknown_kind: `{"kind":"DtmfMetadata","dtmfMetadata":{"data":"1","timestamp":"${ts}"}}`,
  wrong_case_kind: `{"kind":"audioData","audioData":{"timestamp":"${ts}","data":"${b64}","silent":false}}`,
  missing_payload: `{"kind":"AudioData"}`,
  extra_keys: `{"kind":"AudioData","version":2,"audioData":{"timestamp":"${ts}","data":"${b64}","silent":false,"mark":{"sequence":3},"future":"x"}}`,
};

function run(message, binary) {
  try {
    const parsed = StreamingData.parse(binary ? Buffer.from(message, "utf8") : message);
    return { sdk: JSON.parse(JSON.stringify(parsed)), sdk_error: null };
  } catch (e) {
    return { sdk: null, sdk_error: String(e && e.message) };
  }
}
const inbound = Object.entries(cases).map(([name, message]) => ({ name, message, binary: false, ...run(message, false) }));
inbound.push({ name: "audio_mixed_binary", message: cases.audio_mixed, binary: true, ...run(cases.audio_mixed, true) });

const out = { sdk: "@azure/communication-call-automation@1.6.0", outbound, stop, inbound };
const here = dirname(fileURLToPath(import.meta.url));
writeFileSync(join(here, "sdk_fixtures.json"), JSON.stringify(out, null, 1) + "\n");
console.log(`wrote ${outbound.length} outbound and ${inbound.length} inbound cases`);
