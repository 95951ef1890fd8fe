//! `mirrornet-agent demo`.

pub async fn run(_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    Ok(())
}
