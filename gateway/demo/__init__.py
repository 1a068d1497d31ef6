"""The demo: a scripted call (`scripted_call`) placed by a simulated Twilio phone that speaks
Media Streams exactly as Twilio does (`simulated_twilio`; the tests and benchmarks use it too).
Nothing here serves calls."""
