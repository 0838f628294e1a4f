// The chat page: a conversation kept here, sent whole to POST /chat/completions for every reply,
// whose SSE lines ({"token", "part"}, then {"done"} or {"error"}) are shown as they arrive.
// An assistant reply is kept as the chat format's parts, so calculator calls render as trained.
"use strict";

const messagesView = document.getElementById("messages");
const input = document.getElementById("input");
const sendButton = document.getElementById("send");
const errorView = document.getElementById("error");
let conversation = [];  // {role, content}: content is a string (user) or a list of parts (assistant)
let editingIndex = null;  // the user turn being edited, if any
let busy = false;

function showError(text) {
  errorView.textContent = text;
  errorView.hidden = !text;
}

function partElement(kind) {
  const element = document.createElement("span");
  element.className = `part ${kind}`;
  return element;
}

function render() {
  messagesView.replaceChildren();
  conversation.forEach((message, index) => messagesView.append(messageElement(message, index)));
  messagesView.scrollTop = messagesView.scrollHeight;
}

function messageElement(message, index) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  const body = document.createElement("div");
  body.className = "body";
  if (typeof message.content === "string") {
    body.textContent = message.content;
  } else {
    for (const part of message.content) {
      const span = partElement(part.type);
      span.textContent = part.text;
      body.append(span);
    }
  }
  element.append(body);
  const actions = document.createElement("div");
  actions.className = "actions";
  const action = (label, handler) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", handler);
    actions.append(button);
  };
  if (message.role === "user") action("Edit", () => startEditing(index));
  else action("Regenerate", () => regenerate(index));
  element.append(actions);
  return element;
}

function startEditing(index) {
  if (busy) return;
  editingIndex = index;
  input.value = conversation[index].content;
  input.classList.add("editing");
  input.focus();
}

function regenerate(index) {
  if (busy) return;
  conversation = conversation.slice(0, index);  // the user turn before it asks again
  render();
  reply();
}

function number(id) {
  const value = Number(document.getElementById(id).value);
  return Number.isFinite(value) ? value : undefined;
}

async function send(text) {
  if (editingIndex !== null) conversation = conversation.slice(0, editingIndex);
  editingIndex = null;
  input.classList.remove("editing");
  conversation.push({ role: "user", content: text });
  render();
  await reply();
}

async function reply() {
  busy = true;
  sendButton.disabled = true;
  showError("");
  const parts = [];
  const element = messageElement({ role: "assistant", content: [] }, conversation.length);
  element.classList.add("streaming");
  messagesView.append(element);
  const body = element.querySelector(".body");
  const add = (kind, text) => {
    if (!parts.length || parts[parts.length - 1].type !== kind) {
      parts.push({ type: kind, text: "" });
      body.append(partElement(kind));
    }
    parts[parts.length - 1].text += text;
    body.lastChild.textContent += text;
    messagesView.scrollTop = messagesView.scrollHeight;
  };
  try {
    const response = await fetch("/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: conversation, temperature: number("temperature"), top_k: number("top-k") }),
    });
    if (!response.ok) {
      const detail = await response.json().catch(() => ({}));
      throw new Error(detail.error?.message || `the server answered ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const events = buffered.split("\n\n");
      buffered = events.pop();
      for (const event of events) {
        if (!event.startsWith("data: ")) continue;
        const data = JSON.parse(event.slice(6));
        if (data.error) throw new Error(data.error);
        if (data.token) add(data.part || "text", data.token);
      }
    }
    conversation.push({ role: "assistant", content: parts.length ? parts : [{ type: "text", text: "" }] });
  } catch (error) {
    showError(`error: ${error.message}`);
    const failed = conversation.pop();  // the turn that failed comes back to the input box to be sent again
    if (failed?.role === "user" && !input.value) input.value = failed.content;
  } finally {
    busy = false;
    sendButton.disabled = false;
    render();
  }
}

document.getElementById("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || busy) return;
  input.value = "";
  send(text);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    document.getElementById("composer").requestSubmit();
  }
});

document.getElementById("new-chat").addEventListener("click", () => {
  if (busy) return;
  conversation = [];
  editingIndex = null;
  input.value = "";
  input.classList.remove("editing");
  showError("");
  render();
});
