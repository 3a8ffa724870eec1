"""The video library: embed videos once (`library.embed`), index them (`library.index`), search them
(`library.search.Library`). A Prompt Switch video embedding depends on the video alone, so a library is
embedded offline and every query afterwards is one text encoding plus a similarity search."""
