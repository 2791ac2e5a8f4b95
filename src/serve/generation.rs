//! Triton's generate extension: `generate` (the whole text) and `generate_stream` (a server-sent
//! event per token, then the finish), over a language model's generation engine.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Request, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::protocol::{self, GenerateRequest, GenerateResponse, StopStrings};
use super::repository::{Served, ServedModel};
use super::routes::{bad, find, from_error, model_label, outcome, read_body, Reject, Shared};
use crate::generate::{Event, FinishReason, GenerationRequest};
use crate::ops::SamplingSettings;

/// A checked generate request: the engine's request, the seed it samples with (where it
/// samples) and the client's id.
struct Checked {
    request: GenerationRequest,
    seed: Option<u64>,
    id: Option<String>,
}

/// A generate request's body, checked against the language model `m`.
fn check_generate(m: &ServedModel, bytes: &[u8]) -> Result<Checked, String> {
    let Served::Language {
        vocabulary,
        context,
        ..
    } = &m.served
    else {
        return Err(format!(
            "not a language model: use /v2/models/{}/infer",
            m.name
        ));
    };
    let request: GenerateRequest = protocol::parse(bytes)?;
    let mut prompt = Vec::with_capacity(request.text_input.len().min(*context + 1));
    for c in request.text_input.chars() {
        if prompt.len() == *context {
            return Err(format!(
                "text_input is past the model's context of {context} characters"
            ));
        }
        match vocabulary.iter().position(|&v| v == c) {
            Some(i) => prompt.push(i as u32),
            None => return Err(format!("{c:?} is not in the model's vocabulary")),
        }
    }
    if prompt.is_empty() {
        return Err("text_input needs at least one character".into());
    }
    let p = request.parameters;
    let max_tokens = match p.max_tokens {
        None => 32.min(*context),
        Some(n) if n >= 1 && n <= *context as u64 => n as usize,
        Some(n) => {
            return Err(format!(
                "parameters.max_tokens must be in 1..={context} (the model's context), got {n}"
            ))
        }
    };
    let mut sampling = SamplingSettings::greedy();
    if let Some(t) = p.temperature {
        let (lo, hi) = crate::ops::sampling::TEMPERATURE_RANGE;
        if !(t == 0.0 || (lo..=hi).contains(&t)) {
            return Err(format!(
                "parameters.temperature must be 0 (greedy) or in [{lo}, {hi}], got {t}"
            ));
        }
        sampling.temperature = t;
    }
    if let Some(k) = p.top_k {
        sampling.top_k = k;
    }
    if let Some(q) = p.top_p {
        sampling.top_p = q;
    }
    // A sampling request without a seed draws one, and its answer says which.
    let samples = sampling.temperature > 0.0;
    let seed = match p.seed {
        Some(s) => s,
        // 53 bits: exact in every JSON reader.
        None if samples => rand::random::<u64>() >> 11,
        None => 0,
    };
    sampling.seed = seed;
    sampling
        .validate("generate", 0, vocabulary.len())
        .map_err(|e| match e {
            crate::Error::InvalidArgument { details, .. } => format!("parameters: {details}"),
            other => other.to_string(),
        })?;
    let stop = match p.stop {
        None => Vec::new(),
        Some(StopStrings::One(s)) => vec![s],
        Some(StopStrings::Many(list)) => list,
    };
    Ok(Checked {
        request: GenerationRequest {
            prompt,
            max_tokens,
            sampling,
            stop,
            timeout: None,
        },
        seed: samples.then_some(seed),
        id: request.id,
    })
}

/// The text of `tokens` in `m`'s vocabulary.
fn decode(m: &ServedModel, tokens: &[u32]) -> String {
    match &m.served {
        Served::Language { vocabulary, .. } => tokens
            .iter()
            .map(|&t| {
                vocabulary
                    .get(t as usize)
                    .copied()
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        Served::Classifier { .. } => String::new(),
    }
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::MaxTokens => "length",
        FinishReason::EndToken | FinishReason::StopString => "stop",
        FinishReason::ContextFull => "context",
    }
}

/// The model, its checked request, submitted to its engine.
async fn submit(
    state: &Shared,
    path: &HashMap<String, String>,
    request: Request,
) -> Result<(crate::generate::Generation, Checked), Response> {
    let m = find(state, path).map_err(IntoResponse::into_response)?;
    let name = m.name.as_str();
    let bytes = read_body(state, request)
        .await
        .map_err(|Reject(s, e)| Reject(s, format!("model {name:?}: {e}")).into_response())?;
    let mut checked = check_generate(m, &bytes)
        .map_err(|e| bad(format!("model {name:?}: {e}")).into_response())?;
    checked.request.timeout = Some(state.options.request_timeout);
    let Served::Language { engine, .. } = &m.served else {
        return Err(bad(format!("model {name:?} is not a language model")).into_response());
    };
    let generation = engine
        .submit(checked.request.clone())
        .map_err(|e| from_error(name, &e))?;
    Ok((generation, checked))
}

pub(crate) async fn generate(
    State(state): State<Shared>,
    UrlPath(path): UrlPath<HashMap<String, String>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let r = match submit(&state, &path, request).await {
        Err(r) => r,
        Ok((generation, checked)) => {
            let result = tokio::task::spawn_blocking(move || generation.wait()).await;
            let Ok(m) = find(&state, &path) else {
                return Reject(axum::http::StatusCode::NOT_FOUND, "unknown model".into())
                    .into_response();
            };
            match result {
                Err(e) => Reject(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("model {:?}: {e}", m.name),
                )
                .into_response(),
                Ok(Err(e)) => from_error(&m.name, &e),
                Ok(Ok((tokens, reason))) => axum::Json(GenerateResponse {
                    model_name: m.name.clone(),
                    model_version: m.version.clone(),
                    id: checked.id,
                    text_output: decode(m, &tokens),
                    finish_reason: Some(finish_reason(reason)),
                    seed: checked.seed,
                })
                .into_response(),
            }
        }
    };
    state.metrics.observe_request(
        model_label(&state, &path),
        "generate",
        outcome(r.status()),
        started.elapsed().as_secs_f64(),
    );
    r
}

pub(crate) async fn generate_stream(
    State(state): State<Shared>,
    UrlPath(path): UrlPath<HashMap<String, String>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let record = move |state: &Shared, path: &HashMap<String, String>, outcome: &str| {
        state.metrics.observe_request(
            model_label(state, path),
            "generate_stream",
            outcome,
            started.elapsed().as_secs_f64(),
        );
    };
    let (mut generation, checked) = match submit(&state, &path, request).await {
        Err(r) => {
            record(&state, &path, outcome(r.status()));
            return r;
        }
        Ok(submitted) => submitted,
    };
    // Events from the engine's stream, forwarded by a blocking task; the client going away
    // drops the receiver, which ends the task and cancels the generation. The request is
    // recorded when its last event is handed on.
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    let state2 = state.clone();
    tokio::task::spawn_blocking(move || {
        let Ok(m) = find(&state2, &path) else {
            return;
        };
        let event = |text_output: String, finish: Option<&'static str>| GenerateResponse {
            model_name: m.name.clone(),
            model_version: m.version.clone(),
            id: checked.id.clone(),
            text_output,
            finish_reason: finish,
            seed: finish.and(checked.seed),
        };
        loop {
            let Some(e) = generation.next_event(Duration::from_secs(3600)) else {
                record(&state2, &path, "error");
                return;
            };
            let (data, last) = match e {
                Event::Token(t) => (serde_json::to_string(&event(decode(m, &[t]), None)), None),
                Event::Finished(r) => (
                    serde_json::to_string(&event(String::new(), Some(finish_reason(r)))),
                    Some("ok"),
                ),
                Event::Failed(e) => (
                    Ok(
                        serde_json::json!({ "error": format!("model {:?}: {e}", m.name) })
                            .to_string(),
                    ),
                    Some("error"),
                ),
            };
            let data =
                data.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
            if tx.blocking_send(SseEvent::default().data(data)).is_err() {
                generation.cancel();
                record(&state2, &path, "cancelled");
                return;
            }
            if let Some(outcome) = last {
                record(&state2, &path, outcome);
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
