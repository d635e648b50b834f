//! # fpt: frozen pretrained transformers as universal computation engines
//!
//! A frozen, language-pretrained transformer (GPT-2 or a BERT-family encoder) plus a tiny trained
//! adapter (input layer, output head, layer norms, position embeddings: about 0.1% of the weights)
//! computes on bit strings, images, symbol sequences and proteins (Lu et al., 2021).
//!
//! A guided tour:
//! - [`model`]: the backbones (proven equal to transformers by golden tests), the FPT model, adapters;
//! - [`data`]: dataset file formats, parsed and validated up front;
//! - [`tasks`]: the paper's tasks and generic ones, turning data into token batches;
//! - [`train`]: the engine the command line and the service's workers share;
//! - [`job`]: a fine-tuning run, whoever asks for it: the validated spec, its one parse, building a
//!   run and its summary, a job's states;
//! - [`store`], [`queue`], [`serve`], [`api`], [`server`]: the HTTP service, its job queue and workers,
//!   the prediction batcher; [`webhooks`]: the events it sends when jobs and batches end;
//! - [`flags`] and [`cli`]: the `fpt` command line (only the binary's entry uses `cli`).
pub mod api;
pub mod artifacts;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod experiment;
pub mod flags;
pub mod fsutil;
pub mod job;
pub mod loadtest;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod serve;
pub mod server;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod train;
pub mod webhooks;
