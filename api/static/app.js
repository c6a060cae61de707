/* Chat page for the local question-answering service.
 *
 * Plain JavaScript, no build step, nothing loaded from elsewhere. Answers stream
 * from POST /ask as Server-Sent Events read with fetch + ReadableStream (EventSource
 * cannot POST). Everything that comes from the server is inserted as text, never as
 * HTML, so a document cannot inject markup into the page.
 */
"use strict";

const MAX_HISTORY = 20; // turns the server accepts as history
const KEY_STORAGE = "rag-api-key";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  keyToggle: $("key-toggle"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  messages: $("messages"),
  hint: $("hint"),
  askForm: $("ask-form"),
  question: $("question"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  passage: $("passage"),
  passageDoc: $("passage-doc"),
  passageMeta: $("passage-meta"),
  passageText: $("passage-text"),
  passageClose: $("passage-close"),
  uploadForm: $("upload-form"),
  file: $("file"),
  upload: $("upload"),
  uploadStatus: $("upload-status"),
  docList: $("doc-list"),
};

let history = []; // [{role, content}], oldest first
let controller = null; // AbortController of the answer being streamed
let activeCite = null; // the citation button whose passage is shown

/* ---------- small helpers ---------- */

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

class HttpError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function errorFrom(response) {
  let code = "http_" + response.status;
  let message = "The server answered " + response.status + ".";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    /* not JSON: keep the generic message */
  }
  return new HttpError(response.status, code, message, response.headers.get("Retry-After"));
}

function explain(err) {
  if (err instanceof HttpError) {
    if (err.status === 503 && err.code === "busy") {
      const wait = err.retryAfter ? " in " + err.retryAfter + " seconds" : " in a moment";
      return { kind: "busy", text: "The server is busy answering other questions. Please try again" + wait + "." };
    }
    if (err.status === 503 && err.code === "not_ready") {
      return { kind: "busy", text: "The service is still loading its models. Please try again in a few seconds." };
    }
    if (err.status === 401) {
      showKeyForm();
      return { kind: "error", text: "This service needs an API key. Enter it with the “API key” button above." };
    }
    return { kind: "error", text: err.message };
  }
  return {
    kind: "offline",
    text: "Cannot reach the server. Check that it is running (rag serve), then try again.",
  };
}

/* ---------- status line ---------- */

let readyTimer = null;

async function checkReady() {
  clearTimeout(readyTimer);
  try {
    const response = await fetch("/ready", { cache: "no-store" });
    if (response.ok) {
      setStatus("ready", "Ready");
      return true;
    }
    const err = await errorFrom(response);
    if (err.code === "load_failed") {
      setStatus("down", "Failed to load: " + err.message);
      return false;
    }
    setStatus("loading", "Loading models…");
  } catch (_) {
    setStatus("down", "Server unreachable");
  }
  readyTimer = setTimeout(async () => {
    if (await checkReady()) loadDocuments();
  }, 2000);
  return false;
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

/* ---------- API key ---------- */

function showKeyForm() {
  ui.keyForm.hidden = false;
  ui.keyToggle.setAttribute("aria-expanded", "true");
  ui.keyInput.focus();
}

ui.keyToggle.addEventListener("click", () => {
  if (ui.keyForm.hidden) showKeyForm();
  else {
    ui.keyForm.hidden = true;
    ui.keyToggle.setAttribute("aria-expanded", "false");
  }
});

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  ui.keyInput.value = "";
  ui.keyForm.hidden = true;
  ui.keyToggle.setAttribute("aria-expanded", "false");
  loadDocuments();
});

/* ---------- Server-Sent Events over fetch ---------- */

async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
    }
  }
}

/* ---------- conversation ---------- */

function addMessage(role, className) {
  if (ui.hint) {
    ui.hint.remove();
    ui.hint = null;
  }
  const item = el("li", "msg " + role + (className ? " " + className : ""));
  ui.messages.appendChild(item);
  return item;
}

function scrollToEnd() {
  window.scrollTo({ top: document.body.scrollHeight });
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.hidden = !busy;
  ui.question.setAttribute("aria-busy", busy ? "true" : "false");
}

ui.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.askForm.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => {
  if (controller) controller.abort();
});

ui.newChat.addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  ui.messages.textContent = "";
  closePassage();
  ui.question.focus();
});

ui.askForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = ui.question.value.trim();
  if (!question || controller) return;
  ui.question.value = "";

  const asked = addMessage("user");
  asked.appendChild(el("p", "msg-text", question));
  const reply = addMessage("assistant", "streaming");
  reply.setAttribute("aria-busy", "true");
  const live = el("p", "msg-text live");
  reply.appendChild(live);
  scrollToEnd();

  controller = new AbortController();
  setBusy(true);
  let answer = null;
  let failure = null;
  try {
    const response = await fetch("/ask", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ question, history: history.slice(-MAX_HISTORY), stream: true }),
      signal: controller.signal,
    });
    if (!response.ok) throw await errorFrom(response);
    for await (const event of readEvents(response)) {
      if (event.name === "token") {
        live.textContent += event.data.text;
        scrollToEnd();
      } else if (event.name === "answer") {
        answer = event.data;
      } else if (event.name === "error") {
        failure = { kind: "error", text: event.data.message };
      }
    }
    if (!answer && !failure) failure = { kind: "offline", text: "The connection closed before the answer was complete." };
  } catch (err) {
    failure = err.name === "AbortError" ? { kind: "stopped", text: "Stopped." } : explain(err);
  } finally {
    controller = null;
    setBusy(false);
    reply.removeAttribute("aria-busy");
    reply.classList.remove("streaming");
  }

  if (answer) {
    renderAnswer(reply, answer);
    history.push({ role: "user", content: question }, { role: "assistant", content: answer.answer });
    history = history.slice(-MAX_HISTORY);
  } else {
    renderFailure(reply, failure, live.textContent);
    if (failure.kind !== "stopped") ui.question.value = question; // let the user retry as is
  }
  scrollToEnd();
  ui.question.focus();
});

function renderFailure(reply, failure, partial) {
  reply.textContent = "";
  reply.classList.add("failed", failure.kind);
  if (partial) reply.appendChild(el("p", "msg-text partial", partial));
  reply.appendChild(el("p", "notice", failure.text));
}

/* Text with [n] markers -> text nodes and citation buttons. */
function withMarkers(container, text, byMarker) {
  const parts = text.split(/(\[\d+\])/);
  for (const part of parts) {
    const m = /^\[(\d+)\]$/.exec(part);
    const citation = m ? byMarker.get(Number(m[1])) : null;
    if (citation) container.appendChild(citeButton(citation));
    else if (part) container.appendChild(document.createTextNode(part));
  }
}

function citeButton(citation) {
  const button = el("button", "cite", "[" + citation.marker + "]");
  button.type = "button";
  button.setAttribute("aria-label", "Source " + citation.marker + ": " + citation.doc_id);
  button.addEventListener("click", () => openPassage(citation, button));
  return button;
}

function renderAnswer(reply, answer) {
  reply.textContent = "";
  const byMarker = new Map(answer.citations.map((c) => [c.marker, c]));

  if (answer.abstained) {
    reply.classList.add("refusal");
    reply.appendChild(el("p", "refusal-label", "The documents don't say"));
    reply.appendChild(el("p", "msg-text", answer.answer || "No passage answers this question."));
    if (answer.notes && answer.notes.length) reply.appendChild(el("p", "meta", "Why: " + answer.notes.join("; ")));
    return;
  }

  const body = el("p", "msg-text answer-text");
  const sentences = answer.sentences && answer.sentences.length ? answer.sentences : null;
  if (sentences) {
    sentences.forEach((sentence, i) => {
      if (i) body.appendChild(document.createTextNode(" "));
      const span = el("span", "sentence" + (sentence.supported ? "" : " unsupported"));
      withMarkers(span, sentence.text, byMarker);
      // A marker the sentence cites but whose text lost it still gets its button.
      for (const marker of sentence.markers) {
        if (!sentence.text.includes("[" + marker + "]") && byMarker.has(marker)) {
          span.appendChild(citeButton(byMarker.get(marker)));
        }
      }
      if (!sentence.supported) {
        const flag = el("span", "flag", "not supported by the sources");
        if (sentence.note) flag.title = sentence.note;
        span.appendChild(flag);
      }
      body.appendChild(span);
    });
  } else {
    withMarkers(body, answer.answer, byMarker);
  }
  reply.appendChild(body);

  if (answer.citations.length) {
    const list = el("ol", "sources");
    list.setAttribute("aria-label", "Sources");
    for (const citation of answer.citations) {
      const item = el("li");
      item.appendChild(citeButton(citation));
      item.appendChild(document.createTextNode(" " + citation.doc_id + " · " + position(citation)));
      list.appendChild(item);
    }
    reply.appendChild(list);
  }
  if (sentences && sentences.some((s) => !s.supported)) {
    reply.appendChild(el("p", "meta", "Flagged sentences are not backed by the cited passages: check them yourself."));
  }
}

function position(citation) {
  let text = "chars " + citation.start + "–" + citation.end;
  if (citation.page !== null && citation.page !== undefined) {
    // A presentation's pages are its slides; a page read by OCR says so (rag/formats.py page_label says the same).
    text += (/\.pptx$/i.test(citation.doc_id) ? ", slide " : citation.scanned ? ", scanned page " : ", page ") + citation.page;
  }
  return text;
}

/* ---------- source panel ---------- */

function openPassage(citation, button) {
  if (activeCite) activeCite.classList.remove("active");
  activeCite = button;
  button.classList.add("active");

  ui.passageDoc.textContent = "[" + citation.marker + "] " + citation.doc_id;
  ui.passageMeta.textContent = position(citation);
  ui.passageText.textContent = "";
  const text = citation.text;
  // span_* are offsets in the source document; the passage text starts at citation.start.
  const hasSpan = Number.isInteger(citation.span_start) && Number.isInteger(citation.span_end);
  const from = hasSpan ? Math.max(0, citation.span_start - citation.start) : -1;
  const to = hasSpan ? Math.min(text.length, citation.span_end - citation.start) : -1;
  let mark = null;
  if (hasSpan && from < to) {
    ui.passageText.appendChild(document.createTextNode(text.slice(0, from)));
    mark = el("mark", "", text.slice(from, to));
    ui.passageText.appendChild(mark);
    ui.passageText.appendChild(document.createTextNode(text.slice(to)));
  } else {
    ui.passageText.textContent = text;
  }
  ui.passage.hidden = false;
  document.body.classList.add("passage-open");
  ui.passage.focus({ preventScroll: true });
  if (mark) mark.scrollIntoView({ block: "nearest" });
  else ui.passage.scrollIntoView({ block: "nearest" });
}

function closePassage() {
  ui.passage.hidden = true;
  document.body.classList.remove("passage-open");
  if (activeCite) {
    activeCite.classList.remove("active");
    if (document.body.contains(activeCite)) activeCite.focus();
    activeCite = null;
  }
}

ui.passageClose.addEventListener("click", closePassage);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !ui.passage.hidden) closePassage();
});

/* ---------- documents ---------- */

async function loadDocuments() {
  try {
    const response = await fetch("/documents", { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) throw await errorFrom(response);
    renderDocuments(await response.json());
  } catch (err) {
    if (err instanceof HttpError && err.code === "not_ready") return; // checkReady retries
    ui.docList.textContent = "";
    ui.docList.appendChild(el("li", "meta", explain(err).text));
  }
}

function renderDocuments(docs) {
  ui.docList.textContent = "";
  if (!docs.length) {
    ui.docList.appendChild(el("li", "meta", "No documents yet: upload one above."));
    return;
  }
  for (const doc of docs) {
    const item = el("li", "doc");
    const name = el("span", "doc-name", doc.doc_id);
    const meta = el("span", "meta", doc.chunks + (doc.chunks === 1 ? " passage" : " passages"));
    const remove = el("button", "ghost small", "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", "Delete " + doc.doc_id);
    remove.addEventListener("click", () => deleteDocument(doc.doc_id));
    item.append(name, meta, remove);
    ui.docList.appendChild(item);
  }
}

async function deleteDocument(docId) {
  if (!window.confirm("Remove " + docId + " from the index?")) return;
  ui.uploadStatus.textContent = "Removing " + docId + "…";
  try {
    const response = await fetch("/documents/" + encodeURIComponent(docId), {
      method: "DELETE",
      headers: authHeaders(),
    });
    if (!response.ok) throw await errorFrom(response);
    ui.uploadStatus.textContent = "Removed " + docId + ".";
  } catch (err) {
    ui.uploadStatus.textContent = explain(err).text;
  }
  loadDocuments();
}

ui.uploadForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = ui.file.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  ui.upload.disabled = true;
  ui.uploadStatus.dataset.state = "working";
  ui.uploadStatus.textContent = "Uploading and indexing " + file.name + "…";
  try {
    const response = await fetch("/documents", { method: "POST", headers: authHeaders(), body: form });
    if (!response.ok) throw await errorFrom(response);
    const doc = await response.json();
    ui.uploadStatus.dataset.state = "ok";
    ui.uploadStatus.textContent = "Added " + doc.doc_id + " (" + doc.chunks + " passages). You can ask about it now.";
    ui.uploadForm.reset();
  } catch (err) {
    ui.uploadStatus.dataset.state = "error";
    ui.uploadStatus.textContent = explain(err).text;
  } finally {
    ui.upload.disabled = false;
  }
  loadDocuments();
});

/* ---------- start ---------- */

checkReady().then((ready) => {
  if (ready) loadDocuments();
});
