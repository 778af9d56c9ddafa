mod generate;
use clap::Parser;
#[derive(Parser)]
enum Command { Generate(generate::GenerateArgs), Bench }
fn main() {
    match Command::parse() {
        Command::Generate(a) => if let Err(e) = generate::run(a) { eprintln!("error: {e}"); std::process::exit(1) },
        Command::Bench => {
            let device = trl_core::backend::device();
            let p = trl_gen::bench::bench_model::<trl_core::backend::Default>(&device).unwrap();
            let r = trl_gen::bench::bench_model::<trl_core::backend::Default>(&device).unwrap();
            let prompts = trl_gen::bench::bench_prompts(16, 512, 0);
            let (c, rc) = trl_gen::bench_mixture(&p, &r, &prompts, 64).unwrap();
            let toks = 16.0 * 64.0;
            println!("cached {c:.2}s ({:.0} tok/s)  recompute {rc:.2}s ({:.0} tok/s)  speedup {:.1}x  backend {}", toks / c, toks / rc, rc / c, trl_core::backend::name());
        }
    }
}
